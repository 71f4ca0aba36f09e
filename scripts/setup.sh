#!/usr/bin/env bash
# Set up a checkout for the demo and the tests: Debian packages where absent (mosquitto,
# python3-venv, systemd), a virtual environment in .venv with agentd and its test tools.
# Idempotent: run it as often as you like. Set AGENTD_SKIP_APT=1 to skip apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The unit and install tests: systemd-analyze, systemd-sysusers (systemd brings libseccomp2 too).
[ -x /usr/bin/systemd-analyze ] || need_apt+=(systemd)
[ -x /usr/bin/systemd-sysusers ] || need_apt+=(systemd)

if [ ${#need_apt[@]} -gt 0 ] && [ "${AGENTD_SKIP_APT:-0}" != 1 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: no apt-get here; install ${need_apt[*]} with your package manager" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip > .venv/setup.log 2>&1 || true
echo "setup: installing agentd and its test tools into .venv (log: .venv/setup.log)"
if ! .venv/bin/python -m pip install -q -e '.[dev]' >> .venv/setup.log 2>&1; then
  tail -n 30 .venv/setup.log >&2
  echo "setup: pip install failed; the whole log is in .venv/setup.log" >&2
  exit 1
fi
.venv/bin/python -c 'import agentd, onnxruntime, cel' || { echo "setup: install failed; see .venv/setup.log" >&2; exit 1; }
echo "setup: done ($(.venv/bin/agentd --version))"
