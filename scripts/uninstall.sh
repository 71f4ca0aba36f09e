#!/usr/bin/env bash
# Remove agentd installed by scripts/install.sh. Keeps the config (/etc/agentd) and the
# data (/var/lib/agentd: decisions, audit trail, node key) unless --purge. The service
# user stays in any case (Debian's practice: files elsewhere may still carry its uid);
# `userdel agentd` removes it.
set -euo pipefail

PREFIX=/opt/agentd
CONF_DIR=/etc/agentd
STATE_DIR=/var/lib/agentd
UNIT_DIR=/etc/systemd/system
SYSUSERS=/usr/lib/sysusers.d/agentd.conf

usage() {
  cat <<'EOF'
Usage: scripts/uninstall.sh [options]

  --purge      also delete /etc/agentd (config) and /var/lib/agentd (decisions, audit
               trail, node key: the node's identity is gone for good)
  --dry-run    print every step and change nothing
  --root DIR   uninstall from a tree made by install.sh --root DIR (no systemctl)
  -h, --help   this text
EOF
}

DRY_RUN=0 ROOT="" PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --root) ROOT=${2:?--root needs a folder}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "uninstall: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'uninstall: %s\n' "$*"; }
run() {
  printf '  + %s\n' "$*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT=${ROOT%/}
  [ -d "$ROOT" ] || { echo "uninstall: --root $ROOT: no such folder" >&2; exit 1; }
elif [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "uninstall: run as root (sudo bash scripts/uninstall.sh), or try --dry-run" >&2
  exit 1
fi
[ "$DRY_RUN" = 1 ] && say "dry run: printing the steps, changing nothing"

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  say "stopping and disabling the service"
  run systemctl disable --now agentd.service || true
fi
say "removing the unit, the Jetson drop-in and $PREFIX"
for f in "$UNIT_DIR/agentd.service" "$UNIT_DIR/agentd.service.d/jetson.conf"; do
  [ ! -e "$ROOT$f" ] || run rm -f "$ROOT$f"
done
# Other drop-ins there are the admin's: the folder goes only when empty.
if [ -d "$ROOT$UNIT_DIR/agentd.service.d" ] && [ -z "$(ls -A "$ROOT$UNIT_DIR/agentd.service.d")" ]; then
  run rmdir "$ROOT$UNIT_DIR/agentd.service.d"
fi
[ ! -e "$ROOT$PREFIX" ] || run rm -rf "$ROOT$PREFIX"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
fi

if [ "$PURGE" = 1 ]; then
  say "--purge: deleting $CONF_DIR and $STATE_DIR (config, decisions, audit trail, node key)"
  for d in "$CONF_DIR" "$STATE_DIR" /run/agentd; do
    [ ! -e "$ROOT$d" ] || run rm -rf "$ROOT$d"
  done
  [ ! -e "$ROOT$SYSUSERS" ] || run rm -f "$ROOT$SYSUSERS"
  say "the user agentd is kept; remove it with: userdel agentd"
else
  say "kept: $CONF_DIR (config) and $STATE_DIR (decisions, audit trail, node key); --purge deletes them"
fi
say "done$([ "$DRY_RUN" = 1 ] && echo " (dry run: nothing was changed)")."
