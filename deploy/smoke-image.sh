#!/usr/bin/env bash
# Smoke test of the gatebeat image, end to end:
#   build (offline, from a wheelhouse prepared here) -> run `gatebeat demo` in the container
#   -> /metrics has gatebeat series, /healthz answers 200, Docker reports the container healthy,
#   it runs as a non-root user in group dialout -> `docker stop` returns in under 3 s with exit 0
#   -> clean up.
#
# Needs: root (or a usable Docker daemon), python3 with pip. What it cannot find it gets:
#   - no Docker daemon reachable: starts a private dockerd (own socket, data root, no bridge,
#     no iptables; installs Debian's docker.io when dockerd is missing) and stops it at the end;
#   - no base image (nothing local, pull fails): builds a minimal Debian bookworm root with
#     debootstrap, `docker import`s it as gatebeat-base:bookworm and builds on that.
# The private daemon's data root is kept in $GATEBEAT_SMOKE_DIR, so the next run reuses the base.
#
# Environment:
#   GATEBEAT_SMOKE_DIR   work folder (default /tmp/gatebeat-smoke)
#   GATEBEAT_SMOKE_PORT  metrics port of the demo on 127.0.0.1 (default 19810)
#   BASE_IMAGE           base image to use as is (skips the search and debootstrap)
#   DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
#   SMOKE_ONLINE=1       build the online way (pip inside the build reaches the index)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${GATEBEAT_SMOKE_DIR:-/tmp/gatebeat-smoke}
PORT=${GATEBEAT_SMOKE_PORT:-19810}
IMAGE=gatebeat:smoke-$$
CONTAINER=gatebeat-smoke-$$
STOP_LIMIT_S=3
BASE_IMAGE=${BASE_IMAGE:-}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FALLBACK_BASE=gatebeat-base:bookworm

mkdir -p "$WORK"
CONTEXT=$(mktemp -d "$WORK/context.XXXXXX")
OWN_DOCKERD_PID=""
CONTAINER_STARTED=0
IMAGE_BUILT=0

log() { printf '[smoke %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ "$CONTAINER_STARTED" = 1 ]; then
    if [ "$rc" != 0 ]; then
      log "container log (last 40 lines):"
      docker logs --tail 40 "$CONTAINER" >&2 2>&1
    fi
    docker rm -f "$CONTAINER" >/dev/null 2>&1
  fi
  [ "$IMAGE_BUILT" = 1 ] && docker rmi -f "$IMAGE" >/dev/null 2>&1
  rm -rf "$CONTEXT"
  if [ -n "$OWN_DOCKERD_PID" ]; then
    log "stopping the private dockerd (pid $OWN_DOCKERD_PID)"
    kill "$OWN_DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$OWN_DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$OWN_DOCKERD_PID" 2>/dev/null
  fi
  if [ "$rc" = 0 ]; then log "PASS"; else log "smoke test failed (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_install() {
  command -v apt-get >/dev/null || die "need $* and there is no apt-get"
  log "installing $* from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
    || die "could not install $*"
}

# ----------------------------------------------------------------------------- Docker daemon
ensure_docker() {
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    log "using the running Docker daemon (${DOCKER_HOST:-default socket})"
    return
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  command -v docker >/dev/null || apt_install docker.io
  export DOCKER_HOST="unix://$WORK/docker.sock"
  if docker info >/dev/null 2>&1; then
    log "using a private dockerd left running at $DOCKER_HOST"
    return
  fi
  log "starting a private dockerd at $DOCKER_HOST (log: $WORK/dockerd.log)"
  rm -f "$WORK/docker.sock"
  mkdir -p "$WORK/data" "$WORK/exec"
  dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver=overlay2 \
    --iptables=false --ip6tables=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
  OWN_DOCKERD_PID=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && { log "dockerd ready"; return; }
    kill -0 "$OWN_DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  tail -20 "$WORK/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

# ----------------------------------------------------------------------------- base image
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

resolve_base() {
  if [ -n "$BASE_IMAGE" ]; then
    have_image "$BASE_IMAGE" || timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null \
      || die "BASE_IMAGE=$BASE_IMAGE is neither local nor pullable"
    log "base image: $BASE_IMAGE (given)"
    return
  fi
  local candidate
  for candidate in python:3.11-slim-bookworm python:3.11-bookworm; do
    if have_image "$candidate"; then BASE_IMAGE=$candidate; log "base image: $candidate (local)"; return; fi
  done
  if timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim-bookworm; log "base image: $BASE_IMAGE (pulled)"; return
  fi
  BASE_IMAGE=$FALLBACK_BASE
  if have_image "$BASE_IMAGE"; then log "base image: $BASE_IMAGE (built earlier by debootstrap)"; return; fi

  log "no registry reachable: building $BASE_IMAGE with debootstrap (about 2 minutes, once)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  local tarball="$WORK/bookworm-minbase.tar" rootfs="$WORK/rootfs"
  if [ ! -s "$tarball" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . >"$tarball.tmp" && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
  log "base image: $BASE_IMAGE (imported)"
}

# ----------------------------------------------------------------------------- build
prepare_context() {
  # The repository's files (committed or not, minus what .gitignore drops), not stray local state.
  if git -C "$REPO" rev-parse >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # $f belongs to the inner sh
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
      | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
      | tar --null -T - -c) | tar -C "$CONTEXT" -x
  else
    tar -C "$REPO" --exclude=.git --exclude=wheels --exclude='*.egg-info' -c . | tar -C "$CONTEXT" -x
  fi
}

build_wheelhouse() {
  # Wheels for the *image's* Python and CPU, whatever the host runs.
  local pyver arch
  pyver=$(docker run --rm --network=none --entrypoint python3 "$BASE_IMAGE" \
    -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  arch=$(docker image inspect -f '{{.Architecture}}' "$BASE_IMAGE")
  case "$arch" in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac
  log "wheelhouse for Python $pyver on $arch"
  python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$CONTEXT/wheels" "$CONTEXT" \
    || die "pip wheel of gatebeat failed"
  python3 -m pip download -q --disable-pip-version-check -d "$CONTEXT/wheels" \
    --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" --platform any \
    "$(ls "$CONTEXT"/wheels/gatebeat-*.whl)" \
    || die "pip download of gatebeat's dependencies failed"
}

build_image() {
  if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
  local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
  if [ "${SMOKE_ONLINE:-0}" != 1 ]; then
    build_wheelhouse
    args+=(--build-arg WHEELHOUSE=wheels)
  fi
  log "docker build ${args[*]} (log: $WORK/build.log)"
  local t0=$SECONDS
  docker build "${args[@]}" "$CONTEXT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; die "docker build failed"; }
  IMAGE_BUILT=1
  log "built $IMAGE in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
  if docker run --rm --network=none --entrypoint sh "$IMAGE" -c \
      'command -v gcc cc g++ make' >/dev/null 2>&1; then
    die "the final image contains a compiler"
  fi
}

# ----------------------------------------------------------------------------- run and check
http_get() {  # url -> prints "STATUS\nBODY"; never fails
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status); print(r.read().decode("utf-8", "replace"))
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode("utf-8", "replace"))
except Exception as e:  # connection refused while starting
    print(0); print(e)
PY
}

run_and_check() {
  log "docker run $IMAGE demo --listen 127.0.0.1:$PORT"
  docker run -d --name "$CONTAINER" --network=host \
    -e "GATEBEAT_HEALTHCHECK_URL=http://127.0.0.1:$PORT/healthz" \
    --health-interval=2s --health-start-period=5s \
    "$IMAGE" demo --listen "127.0.0.1:$PORT" >/dev/null
  CONTAINER_STARTED=1

  local out status body=""
  for _ in $(seq 1 60); do
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || die "container exited: $(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
    out=$(http_get "http://127.0.0.1:$PORT/metrics"); status=${out%%$'\n'*}
    if [ "$status" = 200 ] && grep -q '^gatebeat_ticks_total' <<<"$out"; then body=$out; break; fi
    sleep 0.5
  done
  [ -n "$body" ] || die "/metrics did not serve gatebeat_ticks_total within 30 s (last: ${out:0:200})"
  local family
  for family in gatebeat_tick_lateness_seconds_bucket gatebeat_ticks_total gatebeat_device_up \
                gatebeat_timer_interval_seconds; do
    grep -q "^$family" <<<"$body" || die "/metrics lacks $family"
  done
  log "/metrics OK ($(grep -c '^gatebeat_' <<<"$body") gatebeat samples)"

  for _ in $(seq 1 40); do
    out=$(http_get "http://127.0.0.1:$PORT/healthz"); status=${out%%$'\n'*}
    [ "$status" = 200 ] && break
    sleep 0.5
  done
  [ "$status" = 200 ] || die "/healthz answered $status, not 200 (${out:0:200})"
  log "/healthz OK"

  local health=""
  for _ in $(seq 1 30); do
    health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER")
    [ "$health" = healthy ] && break
    sleep 1
  done
  [ "$health" = healthy ] || die "Docker HEALTHCHECK status is '$health', not healthy"
  log "HEALTHCHECK OK (healthy)"

  local pid uid groups
  pid=$(docker inspect -f '{{.State.Pid}}' "$CONTAINER")
  if [ -r "/proc/$pid/status" ]; then   # the daemon runs on this host: PID 1 of the container
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    groups=$(awk '/^Groups:/ {$1=""; print}' "/proc/$pid/status")
  else                                  # remote daemon: ask inside the container
    uid=$(docker exec "$CONTAINER" sh -c "awk '/^Uid:/ {print \$2}' /proc/1/status")
    groups=" $(docker exec "$CONTAINER" sh -c "awk '/^Groups:/ {\$1=\"\"; print}' /proc/1/status")"
  fi
  [ "$uid" != 0 ] || die "the service runs as root"
  [ "$uid" = 10001 ] || die "the service runs as uid $uid, not 10001 (gatebeat)"
  grep -qw 20 <<<"$groups" || die "the service is not in group dialout (gid 20); groups:$groups"
  log "user OK (uid $uid, groups$groups)"

  local t0 t1 elapsed code
  t0=$(date +%s.%N)
  docker stop "$CONTAINER" >/dev/null
  t1=$(date +%s.%N)
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
  awk -v e="$elapsed" -v l="$STOP_LIMIT_S" 'BEGIN {exit !(e < l)}' \
    || die "docker stop took $elapsed s (limit $STOP_LIMIT_S s): SIGTERM not handled?"
  [ "$code" = 0 ] || die "exit code after SIGTERM is $code, not 0"
  log "docker stop OK ($elapsed s, exit 0)"
}

check_config_and_journal() {
  # `docker run IMAGE check-config` validates a mounted config; the state volume is writable
  # by the service user (the event journal lives there).
  local out
  out=$(docker run --rm -v "$PWD/deploy/gatebeat.toml:/etc/gatebeat/gatebeat.toml:ro" \
    "$IMAGE" check-config) || die "check-config of deploy/gatebeat.toml failed: $out"
  log "check-config OK ($out)"
  docker run --rm --entrypoint python "$IMAGE" -c \
    "from service.journal import EventJournal; j = EventJournal('/var/lib/gatebeat/events.db'); j.record('smoke', 'ok'); j.close()" \
    || die "the service user cannot write the journal under /var/lib/gatebeat"
  log "journal OK (/var/lib/gatebeat writable by the service user)"
}

ensure_docker
resolve_base
prepare_context
build_image
run_and_check
check_config_and_journal
