"""deploy/docker-compose.yml against the Compose specification schema (vendored in
check-jsonschema, offline), the deployment rules, and the example config through
`gatebeat check-config`."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.deploy._tools import DEPLOY, REPO, run, tool

COMPOSE = DEPLOY / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_matches_the_compose_spec() -> None:
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])


def test_compose_spec_check_is_not_vacuous(tmp_path) -> None:
    broken = _compose()
    broken["services"]["gatebeat"]["ports"] = {"not": "a list"}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0


def test_services_ports_volumes_devices() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"gatebeat", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} not on 127.0.0.1"
    gatebeat = services["gatebeat"]
    assert gatebeat["build"]["context"] == ".."
    assert any(m.endswith(":/etc/gatebeat/gatebeat.toml:ro") for m in gatebeat["volumes"])
    assert gatebeat["devices"], "serial devices through devices:"
    assert "dialout" in gatebeat.get("group_add", [])
    named = set(compose["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, f"{source} is not a declared named volume"
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        if mount.startswith("./"):
            assert mount.endswith(":ro")
            assert (DEPLOY / mount.split(":")[0]).exists(), mount


def _check_config(text: str, tmp_path) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir(exist_ok=True)
    config = tmp_path / "gatebeat.toml"
    config.write_text(text.replace("/etc/gatebeat/drivers", str(drivers)))
    proc = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_config_passes_check_config(tmp_path) -> None:
    _check_config((DEPLOY / "gatebeat.toml").read_text(), tmp_path)


def test_kubernetes_configmap_config_passes_check_config(tmp_path) -> None:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "gatebeat.yaml").read_text())
    maps = [d for d in docs if d and d["kind"] == "ConfigMap"]
    assert maps
    for cm in maps:
        _check_config(cm["data"]["gatebeat.toml"], tmp_path)
