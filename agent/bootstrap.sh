#!/bin/sh
# Installs and starts the Inventiv node agent on a worker machine (cloud-init, SSH adapter, images).
#
# Where the agent comes from, first match wins:
#   WORKER_AGENT_TARBALL  a bundle already on the machine (the SSH adapter uploads it)
#   WORKER_AGENT_URL      a bundle to download (curl or wget)
#   WORKER_AGENT_DIR      an unpacked agent already in place (worker images); default below
# A bundle is `python -m agent.version_tool bundle FILE`: agent/ plus core/wire.py.
#
# WORKER_AGENT_SHA256, when set, must equal the bundle checksum (agent/identity.py): the SHA-256 of
# the manifest of every file in the unpacked tree (`<sha256>  <path>` per file, sorted by path; a
# bundle's own MANIFEST.sha256 and agent/agent.sha256 left out). Any changed, added or removed file,
# compiled bytecode included, changes it: the agent is not started and this script exits with
# status 3, naming the files that differ from the bundle's MANIFEST.sha256 when that is the
# expected one. Bytecode goes to $INSTALL_DIR/pycache, never into the verified tree.
#
# WORKER_AGENT_MODE: background (default: start detached, wait for /healthz, exit), foreground
# (exec the agent: containers), systemd (install and start a unit that restarts it).
# WORKER_PYTHON: the Python to use (default python3); the agent's requirements are installed into
# a virtual environment beside it when that Python lacks them (WORKER_AGENT_PIP=0 forbids it).
# The agent itself is configured by the INVENTIV_AGENT_* variables, passed through unchanged.
set -eu

say() { printf '%s inventiv-bootstrap: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }
die() { code=$1; shift; say "ERROR: $*"; exit "$code"; }

INSTALL_DIR=${WORKER_INSTALL_DIR:-/opt/inventiv}
AGENT_DIR=${WORKER_AGENT_DIR:-$INSTALL_DIR/agent-src}
PYTHON=${WORKER_PYTHON:-python3}
MODE=${WORKER_AGENT_MODE:-background}
mkdir -p "$INSTALL_DIR"

unpack() {
    rm -rf "$AGENT_DIR.new"
    mkdir -p "$AGENT_DIR.new"
    tar -xzf "$1" -C "$AGENT_DIR.new" || die 2 "cannot unpack the agent bundle $1"
    rm -rf "$AGENT_DIR"
    mv "$AGENT_DIR.new" "$AGENT_DIR"
}

if [ -n "${WORKER_AGENT_TARBALL:-}" ]; then
    [ -f "$WORKER_AGENT_TARBALL" ] || die 2 "WORKER_AGENT_TARBALL $WORKER_AGENT_TARBALL does not exist"
    say "installing the agent from $WORKER_AGENT_TARBALL"
    unpack "$WORKER_AGENT_TARBALL"
elif [ -n "${WORKER_AGENT_URL:-}" ]; then
    bundle="$INSTALL_DIR/agent-bundle.tar.gz"
    say "downloading the agent from $WORKER_AGENT_URL"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 5 --retry-delay 2 -o "$bundle" "$WORKER_AGENT_URL" \
            || die 2 "cannot download the agent from $WORKER_AGENT_URL"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$bundle" "$WORKER_AGENT_URL" || die 2 "cannot download the agent from $WORKER_AGENT_URL"
    else
        die 2 "neither curl nor wget is installed: cannot download the agent"
    fi
    unpack "$bundle"
fi
[ -f "$AGENT_DIR/agent/agent.py" ] || die 2 "no agent found at $AGENT_DIR/agent/agent.py"

# The manifest of the tree as it is: every file but the bundle's own manifest and the record.
manifest="$INSTALL_DIR/agent-manifest.sha256"
(
    cd "$AGENT_DIR"
    find . ! -type d ! -path ./MANIFEST.sha256 ! -path ./agent/agent.sha256 | sed 's|^\./||' \
        | LC_ALL=C sort | while IFS= read -r file; do
            sha256sum "$file" 2>/dev/null || echo "unreadable  $file"
        done
) > "$manifest"
actual=$(sha256sum < "$manifest" | cut -d' ' -f1)
if [ -n "${WORKER_AGENT_SHA256:-}" ]; then
    if [ "$actual" != "$WORKER_AGENT_SHA256" ]; then
        listed="$AGENT_DIR/MANIFEST.sha256"
        differ=""
        if [ -f "$listed" ] && [ "$(sha256sum < "$listed" | cut -d' ' -f1)" = "$WORKER_AGENT_SHA256" ]; then
            differ=$({ grep -vxF -f "$listed" "$manifest"; grep -vxF -f "$manifest" "$listed"; } \
                | cut -c67- | LC_ALL=C sort -u | tr '\n' ' ')
            differ=" (files that differ from the bundle's manifest: ${differ% })"
        fi
        die 3 "refusing to start: the agent bundle has SHA-256 $actual but WORKER_AGENT_SHA256 is $WORKER_AGENT_SHA256$differ (tampered or wrong agent version)"
    fi
    say "agent bundle checksum verified: $actual"
else
    say "WORKER_AGENT_SHA256 not set: starting the agent unverified (bundle SHA-256 $actual)"
fi

IMPORTS="import fastapi, uvicorn, httpx, pydantic_settings, prometheus_client, psutil, boto3, orjson"
if ! "$PYTHON" -c "$IMPORTS" >/dev/null 2>&1; then
    [ "${WORKER_AGENT_PIP:-1}" != "0" ] || die 4 "$PYTHON lacks the agent's requirements and WORKER_AGENT_PIP=0"
    say "installing the agent's requirements into $INSTALL_DIR/venv"
    "$PYTHON" -m venv "$INSTALL_DIR/venv" || die 4 "cannot create a virtual environment with $PYTHON"
    "$INSTALL_DIR/venv/bin/pip" install -q -r "$AGENT_DIR/agent/requirements.txt" \
        || die 4 "cannot install the agent's requirements"
    PYTHON="$INSTALL_DIR/venv/bin/python"
fi

export PYTHONPATH="$AGENT_DIR${PYTHONPATH:+:$PYTHONPATH}"
# Bytecode outside the verified tree, so a second bootstrap of the same tree still verifies.
export PYTHONPYCACHEPREFIX="$INSTALL_DIR/pycache"
# On a worker machine the gateway calls the engine directly: it must listen beyond loopback.
export INVENTIV_AGENT_ENGINE_HOST="${INVENTIV_AGENT_ENGINE_HOST:-0.0.0.0}"
LOG="${INVENTIV_AGENT_LOG_FILE:-$INSTALL_DIR/agent.log}"
PORT="${INVENTIV_AGENT_PORT:-8090}"

case "$MODE" in
foreground)
    say "starting the agent in the foreground"
    exec "$PYTHON" -m agent
    ;;
systemd)
    envfile="$INSTALL_DIR/agent.env"
    umask 077
    # systemd's EnvironmentFile syntax: KEY="value" with backslash escapes
    env | grep -E '^(INVENTIV_AGENT_|AWS_|HF_|NVIDIA_|CUDA_|HIP_|ROCR_|TORCH_|NCCL_|VLLM_|FI_|PYTHONPATH=|PYTHONPYCACHEPREFIX=)' \
        | sed 's/\\/\\\\/g; s/"/\\"/g; s/=/="/; s/$/"/' > "$envfile"
    unit_dir=${WORKER_SYSTEMD_DIR:-/etc/systemd/system}
    mkdir -p "$unit_dir"
    cat > "$unit_dir/inventiv-agent.service" <<UNIT
[Unit]
Description=Inventiv node agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=$envfile
ExecStart=$PYTHON -m agent
Restart=always
RestartSec=3
KillMode=mixed
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload || die 5 "systemctl daemon-reload failed"
    # restart, not just start: a re-run of the bootstrap must load the newly installed agent
    systemctl enable inventiv-agent.service || die 5 "cannot enable inventiv-agent.service"
    systemctl restart inventiv-agent.service || die 5 "cannot start inventiv-agent.service"
    say "agent installed as the inventiv-agent systemd service"
    ;;
background)
    say "starting the agent in the background (log: $LOG)"
    nohup setsid "$PYTHON" -m agent >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$INSTALL_DIR/agent.pid"
    # Ask the agent where it listens: loopback when it binds every address.
    HOST="${INVENTIV_AGENT_HOST:-0.0.0.0}"
    case "$HOST" in 0.0.0.0|"::") HOST=127.0.0.1 ;; esac
    tries=0
    while [ "$tries" -lt "${WORKER_AGENT_START_TIMEOUT_S:-60}" ]; do
        kill -0 "$pid" 2>/dev/null || die 5 "the agent exited during start-up; see $LOG"
        if "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen('http://$HOST:$PORT/healthz', timeout=1)" >/dev/null 2>&1; then
            say "agent running (pid $pid), answering on port $PORT"
            exit 0
        fi
        tries=$((tries + 1))
        sleep 1
    done
    die 5 "the agent did not answer on port $PORT within ${WORKER_AGENT_START_TIMEOUT_S:-60}s; see $LOG"
    ;;
*)
    die 2 "unknown WORKER_AGENT_MODE $MODE (background, foreground or systemd)"
    ;;
esac
