# gatebeat gateway image.
#
# Online build (pip reaches the package index):
#     docker build -t gatebeat .
# Offline build (no index inside the build; wheelhouse prepared outside, next to this file):
#     python3 -m pip wheel -w wheels . && docker build --build-arg WHEELHOUSE=wheels -t gatebeat .
# Any Debian-based image with Python >= 3.11 and the venv module works as the base:
#     docker build --build-arg BASE_IMAGE=my-registry/python:3.11-bookworm -t gatebeat .
#
# Works with the classic builder and with BuildKit (no RUN --mount, no heredocs, no COPY --chmod).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build

# Empty: install from the package index. A folder in the build context (e.g. "wheels"):
# install from that folder only (--no-index), for builds without network access.
ARG WHEELHOUSE=
# Extra pip requirement specifiers installed next to gatebeat, e.g. "uvloop" (or "gatebeat[uvloop]").
ARG EXTRA_PACKAGES=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The whole context minus .dockerignore, so an absent wheels/ folder is no error.
COPY . /src

RUN set -eu; \
    python3 -m venv /opt/gatebeat; \
    if [ -n "${WHEELHOUSE}" ]; then \
        if [ ! -d "/src/${WHEELHOUSE}" ]; then \
            echo "WHEELHOUSE=${WHEELHOUSE}: no such folder in the build context (run: pip wheel -w ${WHEELHOUSE} .)" >&2; \
            exit 1; \
        fi; \
        /opt/gatebeat/bin/pip install --no-cache-dir --no-index --find-links "/src/${WHEELHOUSE}" \
            gatebeat ${EXTRA_PACKAGES}; \
    else \
        /opt/gatebeat/bin/pip install --no-cache-dir /src ${EXTRA_PACKAGES}; \
    fi; \
    /opt/gatebeat/bin/gatebeat --help >/dev/null; \
    find /opt/gatebeat -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------- final stage
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="gatebeat" \
      org.opencontainers.image.description="Heartbeats and polls for Modbus and serial devices, with a Prometheus exporter" \
      org.opencontainers.image.licenses="MIT"

# Non-root user; dialout (gid 20 on Debian) opens /dev/ttyUSB*, /dev/ttyS*, /dev/ttyAMA*.
RUN set -eu; \
    groupadd --system --gid 10001 gatebeat; \
    useradd --system --uid 10001 --gid gatebeat --groups dialout \
        --home-dir /var/lib/gatebeat --no-create-home --shell /usr/sbin/nologin gatebeat; \
    mkdir -p /etc/gatebeat/drivers /var/lib/gatebeat; \
    chown gatebeat:gatebeat /var/lib/gatebeat; \
    chmod 0750 /var/lib/gatebeat

COPY --from=build /opt/gatebeat /opt/gatebeat

ENV PATH=/opt/gatebeat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEBEAT_CONFIG=/etc/gatebeat/gatebeat.toml \
    GATEBEAT_METRICS__LISTEN=0.0.0.0:9810 \
    GATEBEAT_RUNTIME__JOURNAL=/var/lib/gatebeat/events.db \
    GATEBEAT_RUNTIME__EXIT_AFTER_UNHEALTHY=30 \
    GATEBEAT_HEALTHCHECK_URL=http://127.0.0.1:9810/healthz

VOLUME ["/var/lib/gatebeat"]
WORKDIR /var/lib/gatebeat
# Numeric, so Kubernetes' runAsNonRoot can verify it (uid 10001 = gatebeat). No ":gid": with an
# explicit group Docker drops the supplementary groups from /etc/group, i.e. dialout.
USER 10001
EXPOSE 9810

# 503 (or no answer) from /healthz -> unhealthy. Docker does not restart unhealthy containers;
# gatebeat exits by itself when wedged and the restart policy brings it back.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('GATEBEAT_HEALTHCHECK_URL', 'http://127.0.0.1:9810/healthz'), timeout=4)"]

STOPSIGNAL SIGTERM
# gatebeat handles SIGTERM/SIGINT/SIGHUP from its first line on (service/stop_signals.py), also as
# PID 1. `docker run --init` (compose: `init: true`) adds Docker's own tini; it is not baked in
# because installing it would need apt in the build, which the offline build has no access to.
ENTRYPOINT ["gatebeat"]
CMD ["run"]
