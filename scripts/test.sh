#!/usr/bin/env bash
# Set everything up, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: ruff"
.venv/bin/ruff check agentd tests scripts
echo "test: import contracts (the layers of ARCHITECTURE.md)"
.venv/bin/lint-imports --no-cache
echo "test: mypy"
.venv/bin/mypy agentd --strict --ignore-missing-imports --no-error-summary
# pytest exits 5 when it collected no test: that is a failure for us, as is any other non-zero code.
# The LLM tests must run, not skip, unless the LLM was deliberately left out.
[ "${AGENTD_SKIP_LLM:-0}" = 1 ] || export AGENTD_REQUIRE_LLM=1
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"
