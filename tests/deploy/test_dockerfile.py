"""The Dockerfile: hadolint clean, and the rules the classic builder and gateways need.

The image itself is built and run by deploy/smoke-image.sh (needs Docker; run by .ci/run)."""

from __future__ import annotations

import json
import re

from tests.deploy._tools import REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean() -> None:
    run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)], cwd=REPO)


def test_classic_builder_compatible() -> None:
    for word, args in _instructions():
        assert "--mount" not in args, "RUN --mount needs BuildKit"
        assert "<<" not in args, "heredocs need BuildKit"
        assert "--chmod" not in args, "COPY --chmod needs BuildKit"
        if word in {"COPY", "ADD"}:
            assert "wheels" not in args, "COPY of wheels/ fails when the folder is absent"


def test_multi_stage_with_base_image_and_wheelhouse_args() -> None:
    ins = _instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2
    assert all(f.startswith("${BASE_IMAGE}") for f in froms)
    args = [a for w, a in ins if w == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") and "bookworm" in a for a in args)
    assert any(a.startswith("WHEELHOUSE") for a in args)
    text = DOCKERFILE.read_text()
    assert "--no-index" in text and "--find-links" in text


def test_runtime_contract() -> None:
    ins = dict(_instructions())  # last one of each kind
    assert json.loads(ins["ENTRYPOINT"]) == ["gatebeat"]
    assert json.loads(ins["CMD"]) == ["run"]
    user = ins["USER"].split(":")[0]
    assert user.isdigit() and user != "0", "numeric non-root user (runAsNonRoot can check it)"
    assert "/healthz" in ins["HEALTHCHECK"]
    assert "/var/lib/gatebeat" in ins["VOLUME"]
    text = DOCKERFILE.read_text()
    assert "GATEBEAT_CONFIG=/etc/gatebeat/gatebeat.toml" in text
    assert "GATEBEAT_METRICS__LISTEN=0.0.0.0:9810" in text
    assert "/etc/gatebeat/drivers" in text
    assert "dialout" in text


def test_final_stage_has_no_build_tools() -> None:
    ins = _instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    final = " ".join(args for word, args in ins[last_from:] if word == "RUN")
    for word in ("apt-get", "gcc", "build-essential", "pip install"):
        assert word not in final, f"final stage runs {word!r}"


def test_dockerignore_keeps_the_wheelhouse_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any("wheel" in p for p in patterns), "the offline build needs wheels/"
    for needed in (".git", "tests"):
        assert needed in patterns
    for kept in ("service", "drivers", "pyproject.toml", "README.md"):
        assert kept not in patterns
