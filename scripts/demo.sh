#!/usr/bin/env bash
# Set everything up, then run the demo: a node deciding simulated freezer telemetry.
# Extra arguments go to `agentd demo` (e.g. --seconds 30 --rate 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/agentd demo --config config/agentd.yaml "$@"
