"""deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate (offline, strict: unknown fields are errors)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy._tools import DEPLOY, run, tool

MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
K8S_VERSIONS = ["1.30.0", "1.33.0"]  # k3s releases in service on gateways


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate(version: str) -> None:
    assert MANIFESTS
    out = run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, MANIFESTS)])
    assert "passed" in out


def test_validator_is_not_vacuous(tmp_path) -> None:
    docs = list(yaml.safe_load_all(MANIFESTS[0].read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["portt"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr


def test_gateway_deployment_rules() -> None:
    docs = [d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text()) if d]
    deployments = [d for d in docs if d["kind"] in {"Deployment", "DaemonSet"}]
    assert deployments
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert 20 in pod["securityContext"]["supplementalGroups"], "dialout"
        container = next(c for c in pod["containers"] if c["name"] == "gatebeat")
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz"
        hostpaths = [v["hostPath"] for v in pod["volumes"] if "hostPath" in v]
        assert any(h.get("type") == "CharDevice" for h in hostpaths), "serial via hostPath"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/gatebeat/gatebeat.toml"]["readOnly"] is True
        configmaps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        assert configmaps & {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        if dep["kind"] == "Deployment":
            assert dep["spec"]["replicas"] == 1
            assert dep["spec"]["strategy"]["type"] == "Recreate"
