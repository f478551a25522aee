#!/usr/bin/env bash
# The test command: set up (idempotent), then every tier: unit, integration, system.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export LABCTL_TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
if (($# == 0)); then
  # Every tier, the VM tier (tests/vm) in a pytest run of its own: the system tier's booted
  # machines live until its session ends, and on 2 cores the emulated VM must not share them.
  rc=0
  .venv/bin/python -m pytest -p no:cacheprovider --ignore=tests/vm || rc=$?
  .venv/bin/python -m pytest -p no:cacheprovider tests/vm || rc=$((rc ? rc : $?))
  exit "$rc"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
