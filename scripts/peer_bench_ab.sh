#!/usr/bin/env bash
# agentd beside Node-RED on ../shared/peer-bench, alternating in one run (issue 17): Node-RED stock,
# agentd at a baseline commit, agentd as checked out; each on its own private broker (the harness's).
#
#   scripts/peer_bench_ab.sh ROUNDS BASE [bench args...]
#   scripts/peer_bench_ab.sh 2 26aa55e
#
# The baseline runs from `git archive BASE` with this checkout's venv (PYTHONPATH first). Prints, per
# run, the UTC time, the load average and the harness's JSON line; a table at the end.
# Needs what ../shared/peer-bench/README.md says (Node-RED under /tmp/peer-nodered, /tmp/peer-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=$1 base=$2
shift 2
bench=$root/../shared/peer-bench/run-nodered.sh
work=$(mktemp -d /tmp/agentd-peer-ab-XXXXXX)
trap 'rm -rf "$work"' EXIT
git archive "$base" | tar -x -C "$work"
out=$work/runs.txt
for i in $(seq 1 "$rounds"); do
  for who in nodered base new; do
    echo "== $who round $i $(date -u +%H:%M:%S) UTC load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
    case $who in
      nodered) "$bench" "$@" 2>&1 | tail -1 | tee -a "$out" ;;
      base) DECIDER=cmd DECIDER_CMD="env PYTHONPATH=$work $root/scripts/peer_bench_node.sh" "$bench" "$@" 2>&1 | tail -1 | tee -a "$out" ;;
      new) DECIDER=cmd DECIDER_CMD="$root/scripts/peer_bench_node.sh" "$bench" "$@" 2>&1 | tail -1 | tee -a "$out" ;;
    esac
  done
done
"$root/.venv/bin/python" - "$out" <<'PY'
import json, sys
name = None
print(f"{'run':40s} {'p50 ms':>8s} {'p99 ms':>8s} {'events/s':>9s} {'not decided in grace':>21s} {'dup':>4s} {'correct':>8s}")
for line in open(sys.argv[1]):
    if line.startswith("=="):
        name = line[3:].split(" UTC")[0]
    elif line.startswith("{"):
        d = json.loads(line)
        print(f"{name:40s} {d.get('latency_p50_ms')!s:>8s} {d.get('latency_p99_ms')!s:>8s} {d.get('throughput_eps')!s:>9s} {d.get('lost')!s:>21s} {d.get('duplicated')!s:>4s} {d.get('correct_of_12')!s:>8s}")
PY
