#!/usr/bin/env bash
# The test command: set up (idempotent), then every tier: unit, integration, system, vm.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export LABCTL_TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
if (($# == 0)); then
  # One pytest run per tier, so each tier's wall time is its own; the VM tier (tests/vm) last
  # and alone: the system tier's booted machines live until its session ends, and on 2 cores
  # the emulated VM must not share them. A failing tier does not stop the next.
  rc=0
  times=()
  for tier in unit integration system vm; do
    start=$SECONDS
    if [[ $tier == vm ]]; then
      .venv/bin/python -m pytest -p no:cacheprovider tests/vm || rc=$((rc ? rc : $?))
    else
      .venv/bin/python -m pytest -p no:cacheprovider -m "$tier" --ignore=tests/vm || rc=$((rc ? rc : $?))
    fi
    times+=("$tier $((SECONDS - start)) s")
  done
  printf 'tier wall time: %s\n' "${times[@]}"
  exit "$rc"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
