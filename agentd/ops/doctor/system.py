"""Doctor checks of the host: the system clock (against the release and the stored records), the systemd service."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from agentd.errors import AgentdError
from agentd.ops.doctor.findings import Check, Context, fail, ok, skip, warn

# agentd 0.1.0 was cut on this day (UTC); a clock before it is certainly wrong. Bump per release.
RELEASED_AT = 1_795_564_800.0  # 2026-11-25T00:00:00Z
CLOCK_JUMP_S = 366 * 86400.0  # ahead of the newest record by more than this: suspicious


def check_clock(ctx: Context) -> list[Check]:
    from agentd.state import queries

    now = time.time()
    fix = "enable time sync (`timedatectl set-ntp true`, or chrony) and check the RTC battery; restart agentd once the clock is right"
    if now < RELEASED_AT:
        return [fail("clock", f"system time {time.strftime('%Y-%m-%d', time.gmtime(now))} is before this agentd release", fix)]
    newest = None
    with contextlib.suppress(AgentdError, sqlite3.Error):
        conn = queries.open_readonly(ctx.cfg.data_dir)
        try:
            newest = conn.execute("SELECT MAX(ts) FROM (SELECT MAX(ts) AS ts FROM audit UNION ALL SELECT MAX(created_at) FROM decisions)").fetchone()[0]
        finally:
            conn.close()
    if newest is None:
        return [ok("clock", "after the release date; no stored record to compare with")]
    if now < newest - 5:
        return [fail("clock", f"system time is {newest - now:.0f} s behind the newest stored record (the clock went back)", fix)]
    if now - newest > CLOCK_JUMP_S:
        return [warn("clock", f"the newest stored record is {(now - newest) / 86400:.0f} days old: was the node off that long, or did the clock jump?", fix)]
    return [ok("clock", f"after the release date and {now - newest:.0f} s after the newest stored record")]


def check_service(ctx: Context) -> list[Check]:
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = ""
    systemctl = shutil.which("systemctl")
    if pid1 != "systemd" or systemctl is None:
        return [skip("service", "systemd is not PID 1 here")]
    try:
        load = subprocess.run([systemctl, "show", "-p", "LoadState", "--value", "agentd"], capture_output=True, text=True, timeout=5, check=False)
        if load.stdout.strip() == "not-found":
            return [skip("service", "agentd.service is not installed (scripts/install.sh installs it)")]
        active = subprocess.run([systemctl, "is-active", "agentd"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [warn("service", f"systemctl did not answer: {exc}", "check systemd itself: `systemctl status`")]
    state = active.stdout.strip() or "unknown"
    if state == "active":
        return [ok("service", "agentd.service is active")]
    return [fail("service", f"agentd.service is {state}", "`journalctl -u agentd -n 50` shows why; then `systemctl start agentd`")]
