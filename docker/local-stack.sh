#!/usr/bin/env bash
# The docker path for real on a machine whose engine cannot pull images: a Debian base image built here
# (debootstrap, then `docker import`), docker/Dockerfile.cpu built on it, a Postgres image on it, the compose stack
# (Postgres, Prefect server with auth, MLflow with its basic-auth app, a process worker) started from
# docker/compose.yaml with docker/compose.local.yaml, every deployment of prefect.yaml deployed, and one tiny round run
# through the pipeline deployment. Then the stack is checked from outside (ports on 127.0.0.1 only, the APIs refuse
# requests without credentials, the round's model is registered) and taken down with its volumes.
#
#   docker/local-stack.sh            # as root (debootstrap, chroot); needs a running docker engine
#   docker/local-stack.sh --keep     # leave the stack running afterwards
#
# Needs: a docker engine (Debian: apt-get install docker.io; dockerd &), docker compose or docker-compose, debootstrap,
# a Debian mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian) and PyPI reachable from the builds (they use
# the host network; RRHF_WHEELS, default /opt/wheels, is a folder of torch wheels served to the build). Secrets are generated into $OUT/stack.env (mode 0600), never on a command
# line. Every step's duration is in $OUT/log.txt (OUT defaults to runs/docker-local).
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
OUT=${OUT:-runs/docker-local}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=rrhf-base:bookworm
WHEELS=${RRHF_WHEELS:-/opt/wheels}
PROJECT=rrhf-local
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

T0=$(date +%s)
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
fail() { say "FAILED: $*"; exit 1; }
timed() {  # timed NAME CMD...: run CMD, log its duration
    local name=$1 t
    shift
    t=$(date +%s)
    "$@"
    say "$name: $(($(date +%s) - t)) s"
}

docker info > /dev/null 2>&1 || fail "no docker engine answers (Debian: apt-get install docker.io, then start dockerd)"
if docker compose version > /dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose > /dev/null; then
    COMPOSE=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)"
fi
for port in 4200 5000; do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
        fail "port $port on 127.0.0.1 is in use: the stack publishes its UIs there"
    fi
done
say "engine: $(docker version --format '{{.Server.Version}}'); compose: $("${COMPOSE[@]}" version --short 2> /dev/null || echo '?')"

# --- 1. the base image: Debian bookworm with Python 3.11 in /opt/venv and PostgreSQL 15 ---------------------------
build_base() {
    command -v debootstrap > /dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
    local root
    root=$(mktemp -d /var/tmp/rrhf-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,postgresql,libgomp1 \
        bookworm "$root" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 || fail "debootstrap (see $OUT/debootstrap.log)"
    chroot "$root" python3 -m venv /opt/venv
    # this machine's CA bundle: package indexes behind a proxy with its own certificate stay reachable
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$BASE" > /dev/null
    rm -rf "$root"
}
if docker image inspect "$BASE" > /dev/null 2>&1; then
    say "base image $BASE exists (docker rmi $BASE to build it again)"
else
    timed "base image (debootstrap + import)" build_base
fi

# --- 2. the project's CPU image and the Postgres image on that base -------------------------------------------------
SERVER_PID=
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2> /dev/null || true
}
trap cleanup EXIT
torch_args="--index-url https://download.pytorch.org/whl/cpu"
if [[ -d "$WHEELS" ]]; then  # served to the build on a free local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WHEELS" > "$OUT/wheels-server.log" 2>&1 &
    SERVER_PID=$!
    sleep 1
    torch_args="--find-links http://127.0.0.1:$port/"
fi
build_args=(--network host --build-arg "BASE=$BASE" --build-arg "TORCH_PIP_ARGS=$torch_args")
build_cpu() {
    docker build "${build_args[@]}" -f docker/Dockerfile.cpu -t rrhf-pipeline:cpu . > "$OUT/build-cpu.log" 2>&1 ||
        { tail -30 "$OUT/build-cpu.log"; fail "docker build of docker/Dockerfile.cpu (see $OUT/build-cpu.log)"; }
}
build_postgres() {
    docker build --build-arg "BASE=$BASE" -f docker/Dockerfile.postgres-local -t rrhf-postgres:local . \
        > "$OUT/build-postgres.log" 2>&1 || fail "the postgres image (see $OUT/build-postgres.log)"
}
timed "image rrhf-pipeline:cpu" build_cpu
timed "image rrhf-postgres:local" build_postgres
say "image sizes: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^rrhf-' | tr '\n' ';')"

# --- 3. the stack ---------------------------------------------------------------------------------------------------
ENV_FILE="$OUT/stack.env"
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
umask 077
cat > "$ENV_FILE" << EOF
POSTGRES_PASSWORD=$(secret)
PREFECT_AUTH=admin:$(secret)
MLFLOW_TRACKING_PASSWORD=$(secret)
MLFLOW_FLASK_SECRET=$(secret)
EOF
umask 022
compose() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" -f docker/compose.yaml -f docker/compose.local.yaml "$@"; }
down() {
    if [[ $KEEP == 1 ]]; then
        say "the stack keeps running: ${COMPOSE[*]} -p $PROJECT --env-file $ENV_FILE -f docker/compose.yaml -f docker/compose.local.yaml down -v"
    else
        compose down -v > "$OUT/down.log" 2>&1 || true
        say "stack taken down (volumes removed)"
    fi
    cleanup
}
trap down EXIT

healthy() {  # every service of the stack healthy, or a timeout
    local deadline=$(($(date +%s) + ${1:-900})) states
    while (($(date +%s) < deadline)); do
        states=$(compose ps -q | xargs -r docker inspect --format '{{.Name}}={{.State.Health.Status}}' | tr '\n' ' ')
        say "  $states"
        if [[ -n "$states" && "$states" != *starting* && "$states" != *unhealthy* ]]; then
            return 0
        fi
        sleep 10
    done
    compose logs --tail 40 || true
    fail "the stack was not healthy in time"
}
start_stack() {
    compose up -d > "$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; fail "compose up"; }
    healthy 900
}
timed "stack start (up to every service healthy)" start_stack

# ports: published on 127.0.0.1 only
for c in $(compose ps -q); do
    bindings=$(docker inspect --format '{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}} {{end}}{{end}}' "$c")
    for b in $bindings; do
        [[ "$b" == 127.0.0.1:* ]] || fail "container $c publishes $b beyond 127.0.0.1"
    done
done
say "published ports: all on 127.0.0.1"

# --- 4. the deployments, and one tiny round through the pipeline deployment ------------------------------------------
deploy_all() {
    compose exec -T worker prefect --no-prompt deploy --all > "$OUT/deploy.log" 2>&1 ||
        { tail -30 "$OUT/deploy.log"; fail "prefect deploy"; }
}
timed "prefect deploy --all (in the worker)" deploy_all
TINY='{"config": {"workdir": "runs/docker-tiny", "prompts": ["embedded:demo-prompts"],
  "registered_model": "docker-tiny",
  "sample": {"backend": "hf", "k": 2, "max_new_tokens": 8, "limit": 6},
  "train": {"max_steps": 2, "micro_batch_size": 2, "grad_accum": 1, "max_length": 128, "max_response_tokens": 16},
  "evaluate": {"max_new_tokens": 8, "best_of_k": 1}}}'
run_round() {
    compose exec -T worker prefect deployment run 'rrhf-pipeline/pipeline' --params "$TINY" --watch \
        > "$OUT/round.log" 2>&1
    grep -qE "finished (successfully )?in (state )?'Completed'" "$OUT/round.log"
}
timed "tiny round through the pipeline deployment" run_round || {
    tail -40 "$OUT/round.log"
    compose logs --tail 80 worker || true
    fail "the deployment's run did not complete"
}
grep -E "flow run|Completed|state" "$OUT/round.log" | tail -3 || true

# --- 5. from outside: credentials required, the round's model registered --------------------------------------------
# shellcheck disable=SC1090
source "$ENV_FILE"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
[[ $(code -X POST http://127.0.0.1:4200/api/flows/filter -H 'Content-Type: application/json' -d '{}') == 401 ]] ||
    fail "the Prefect API answered without credentials"
[[ $(code -u "$PREFECT_AUTH" -X POST http://127.0.0.1:4200/api/flows/filter -H 'Content-Type: application/json' -d '{}') == 200 ]] ||
    fail "the Prefect API refused its own credentials"
[[ $(code -X POST http://127.0.0.1:5000/api/2.0/mlflow/experiments/create -H 'Content-Type: application/json' -d '{"name":"x"}') == 401 ]] ||
    fail "MLflow accepted a write without credentials"
registered=$(curl -s -u "admin:$MLFLOW_TRACKING_PASSWORD" \
    "http://127.0.0.1:5000/api/2.0/mlflow/registered-models/get?name=docker-tiny")
[[ "$registered" == *'"name": "docker-tiny"'* || "$registered" == *'"name":"docker-tiny"'* ]] ||
    fail "the round's model is not registered in MLflow: $registered"
say "checked: the Prefect API and MLflow refuse requests without credentials; docker-tiny is registered"
say "all done in $(($(date +%s) - T0)) s"
