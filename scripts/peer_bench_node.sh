#!/usr/bin/env bash
# One agentd node for ../shared/peer-bench (run-nodered.sh with DECIDER=cmd): writes a config for
# the broker port, fleet and node the harness gives (MQTT_PORT, FLEET, NODE) with the bench's four
# reference freezer rules (rules only, no approval), then runs the daemon.
#
#   DECIDER=cmd DECIDER_CMD="$PWD/scripts/peer_bench_node.sh" ../shared/peer-bench/run-nodered.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/agentd-peer.XXXXXX)
cat > "$DIR/agentd.yaml" <<YAML
node: {id: "${NODE:-cmd}", fleet: "${FLEET:-peer}", data_dir: "$DIR/data"}
lifecycle: {stage: dev, release: peer-bench}
mqtt: {enabled: true, host: 127.0.0.1, port: ${MQTT_PORT:?MQTT_PORT is not set}, protocol: "${AGENTD_MQTT_PROTOCOL:-auto}"}
daemon: {log_level: "${AGENTD_LOG_LEVEL:-warning}"}
skills:
  - name: freezer_health
    input:
      temperature_c: {type: number, min: -60, max: 60}
      door_open_s: {type: number, min: 0, max: 86400}
      compressor_a: {type: number, min: 0, max: 100}
      note: {type: string, required: false, max_length: 500}
    actions: [none, alert, defrost, shutdown]
    deadline_ms: 200
    rules:
      - {name: dead_and_warm, when: "temperature_c > 0.0 && compressor_a < 0.5", action: shutdown}
      - {name: warm, when: "temperature_c > -10.0", action: alert}
      - {name: door_open, when: "door_open_s > 300.0", action: alert}
      - {name: icing, when: "compressor_a > 8.0", action: defrost}
      - {name: default, action: none, default: true}
YAML
exec "$HERE/.venv/bin/agentd" run --config "$DIR/agentd.yaml"
