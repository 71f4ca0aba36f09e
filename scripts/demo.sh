#!/usr/bin/env bash
# Set everything up, then run the demo: three nodes on a private broker, gossiping signed
# decisions on simulated freezer telemetry, node-a also answering staff requests with its LLM.
# Extra arguments go to `agentd demo` (e.g. --seconds 30 --rate 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/agentd demo --config config/agentd.yaml "$@"
