#!/usr/bin/env bash
# In-process throughput of two versions in one run, alternating (issue 17): a baseline commit, and
# the same commit with a list of commits applied (so that other work in between is in neither).
#
#   scripts/bench_ab.sh ROUNDS BASE [COMMIT...]
#   scripts/bench_ab.sh 2 8d3c28f 576b2e1 5317656 342e531 125b1f2
#
# Each round runs, for the baseline copy and then the new one: `agentd bench --only throughput`
# (decisions/s, median of 3 rounds of 4,000) and scripts/profile_decision.py --rounds 2 (CPU µs a
# decision: the process, and the event loop's thread), each with its copy's own example config.
# Model files that git does not hold (MiniLM, Gemma) are linked from this checkout's models/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=$1 base=$2
shift 2
work=$(mktemp -d /tmp/agentd-ab-XXXXXX)
trap 'rm -rf "$work"' EXIT
for t in base new; do
  mkdir "$work/$t"
  git archive "$base" | tar -x -C "$work/$t"
  for f in models/*; do [ -e "$work/$t/$f" ] || ln -s "$root/$f" "$work/$t/$f"; done
done
for c in "$@"; do git format-patch -1 --stdout "$c" | (cd "$work/new" && git apply --exclude="docs/*"); done  # the docs need not apply
# each copy profiles with its own scripts/profile_decision.py (the harness is part of what is compared)
cd "$work"
for i in $(seq 1 "$rounds"); do
  for t in base new; do
    echo "== $t, round $i, $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH="$work/$t" "$root/.venv/bin/python" -m agentd.cli bench --config "$work/$t/config/agentd.yaml" --only throughput --json \
      | "$root/.venv/bin/python" -c "import json,sys; d=json.load(sys.stdin); print('$t bench', {k: d.get(k) for k in ('decisions_per_s_rules_only', 'decisions_per_s', 'decisions_per_s_min', 'decisions_per_s_max', 'decisions_per_s_in_hand_200', 'throughput_shed_in_hand_200', 'throughput_shed', 'throughput_lost')})"
    PYTHONPATH="$work/$t" "$root/.venv/bin/python" "$work/$t/scripts/profile_decision.py" --config "$work/$t/config/agentd.yaml" --rounds 2 \
      --stats "$work/$t.json" 2>&1 | sed "s/^/$t cpu /"
  done
done
echo "== end, $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
