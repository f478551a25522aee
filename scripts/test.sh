#!/usr/bin/env bash
# The test command: set up (idempotent), then every tier: unit, integration, system.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export LABCTL_TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
