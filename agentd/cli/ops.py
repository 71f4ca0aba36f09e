"""Operations commands of the `agentd` CLI: doctor, backup, restore.

Thin wrappers: the logic lives in ``agentd.ops.doctor`` and ``agentd.ops.backup``.
``agentd.cli`` calls ``register(main, agentd.cli._common)``, which holds the shared options
and helpers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click

Decorator = Callable[[Callable[..., None]], Callable[..., None]]


def register(group: click.Group, cli: ModuleType) -> None:
    """Add doctor, backup and restore to the `agentd` group; ``cli`` is the module that holds
    ``config_option``, ``json_option``, ``_load`` and ``_emit_json``."""
    config_option: Decorator = cli.config_option
    json_option: Decorator = cli.json_option
    _load, _emit_json = cli._load, cli._emit_json

    @click.command()
    @config_option
    @json_option
    def doctor(config_path: Path | None, as_json: bool) -> None:
        """Check config, keys and permissions, model hashes, runtimes, database and audit chain,
        free disk, the broker (a real connect: reachable, TLS, auth), the clock and the service.

        Each failure comes with a one-line fix. Exit 0 if nothing failed (warnings allowed), 1 otherwise.
        Example: agentd doctor --config /etc/agentd/agentd.yaml
        """
        from agentd.config.loader import find_config
        from agentd.ops.doctor import run_checks

        checks = run_checks(find_config(config_path))
        failed = [c for c in checks if c.status == "fail"]
        if as_json:
            _emit_json({"ok": not failed, "checks": [c.as_dict() for c in checks]})
        else:
            width = max(len(c.name) for c in checks)
            for c in checks:
                click.echo(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
                if c.fix:
                    click.echo(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
            click.echo(f"{len(failed)} check(s) failed" if failed else "all checks passed")
        sys.exit(1 if failed else 0)


    @click.command()
    @config_option
    @json_option
    @click.argument("path", type=click.Path(path_type=Path))
    def backup(config_path: Path | None, as_json: bool, path: Path) -> None:
        """Back up the node: a consistent copy of the database (safe while the daemon runs), the
        node's public key and the config's SHA-256, with a signed manifest.

        PATH is a new directory, or a file ending in .tar.gz / .tgz / .tar.
        Example: agentd backup /srv/backups/cold-store-01-$(date +%F).tar.gz
        """
        from agentd.ops.backup import create_backup

        manifest = create_backup(_load(config_path), path)
        if as_json:
            _emit_json(manifest)
            return
        a = manifest["audit"]
        click.echo(f"backup of node {manifest['node']} written to {path}")
        click.echo(f"  database {manifest['database']['bytes'] / 2**20:.1f} MiB, {manifest['decisions']} decision(s),"
                   f" audit records up to {a['head_seq']} ({a['checkpoints']} signed checkpoint(s)), chain verified")


    @click.command()
    @config_option
    @json_option
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option("--force", is_flag=True, help="Restore even a backup older than a head the peers witnessed, or with no"
                                               " peer answering (recorded in the signed restore record).")
    @click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
                  help="Seconds to wait for the peers' answers.")
    def restore(config_path: Path | None, as_json: bool, path: Path, force: bool, timeout_s: float) -> None:
        """Restore the node's database from a backup made by `agentd backup`.

        Refuses a backup whose audit chain or manifest does not verify, and a node that is
        running (stop it first). Where a broker is configured it asks the peers (one signed
        request) for the heads of this node they witnessed and refuses a backup whose chain
        does not reach one of them (an older copy: restoring it would roll the node back),
        and, when no peer answers, any backup, unless --force; the signed restore record
        keeps what they said and whether it was forced. The database it replaces is kept next
        to it as agentd.db.replaced-<time>. Example: agentd restore /srv/backups/cold-store-01-2026-11-25.tar.gz
        """
        from agentd.ops.backup import restore_backup

        result = restore_backup(_load(config_path), path, force=force, timeout_s=timeout_s)
        if as_json:
            _emit_json(result)
            return
        fleet = result["restore_record"]["fleet"]
        if fleet.get("note"):
            click.echo(fleet["note"])
        else:
            newest = max((w["seq"] for w in fleet["witnessed"]), default=None)
            click.echo(f"peers: {len(fleet['answered'])} of {len(fleet['asked'])} answered"
                       + (f", the newest head they witnessed is record {newest}" if newest is not None else ", none witnessed a head"))
            for line in fleet["failures"]:
                click.echo(f"forced past: {line}")
        if force:
            click.echo("--force: recorded in the signed restore record")
        click.echo(f"restored {result['database']} from {path} ({result['audit_records']} audit record(s), chain verified)")
        if result.get("replaced"):
            click.echo(f"the previous database is kept as {result['replaced']}")
        click.echo("start the node again: `systemctl start agentd` (or `agentd run`)")

    for command in (doctor, backup, restore):
        group.add_command(command)
