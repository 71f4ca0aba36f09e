"""Fleet commands of the `agentd` CLI: fleet send (signed commands, verified replies), fleet set and unset
(site-wide fleet-state keys, written by the operator's signed command)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agentd.cli._common import _emit_json, _load, _parse_json_arg, config_option, json_option, main
from agentd.control.registry import COMMANDS, REGISTRY
from agentd.errors import InputError


@main.group()
def fleet() -> None:
    """Steer the fleet with signed commands."""


@fleet.command("send")
@config_option
@json_option
@click.argument("cmd", type=click.Choice(sorted(COMMANDS, key=list(REGISTRY).index)))  # the registry's fleet commands
@click.option("--target", default="all", show_default=True, help="A node id, or all.")
@click.option("--args", "args_json", default="{}", help="The command's arguments as a JSON object.")
@click.option("--config-file", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="For set_config: the YAML document to send.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The operator's private key file.")
@click.option("--operator", default=None, help="Operator name in trust.operators (default: the key file's name).")
@click.option("--peer-key", "peer_key_opts", multiple=True, metavar="NODE=BASE64",
              help="A node's public key (agentd keys show) to verify its replies with, besides trust.peers; repeatable.")
@click.option("--ttl", type=click.FloatRange(1, 86400), default=300, show_default=True, help="Seconds the command stays valid.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 600), default=5, show_default=True, help="Seconds to wait for replies.")
def fleet_send(config_path: Path | None, as_json: bool, cmd: str, target: str, args_json: str, config_file: Path | None,
               key_path: Path, operator: str | None, peer_key_opts: tuple[str, ...], ttl: float, timeout_s: float) -> None:
    """Sign a fleet command with an operator key, send it over MQTT, print the replies.

    Uses the broker settings and fleet of --config. A reply counts only if it is
    signed by the node whose topic it came on, with that node's key from
    trust.peers, from --peer-key or (if readable) this config's own node key; any
    other is printed as UNVERIFIED. For all, waits --timeout; for one --target,
    until it answers. Exit 0 only if every reply is verified and ok and every
    targeted node answered (the --target, or for all each node of trust.peers and
    --peer-key), 1 otherwise. --json prints {"command_id", "target", "ok",
    "replies": [{"node", "verified", "reason", "body"}], "missing": [NODE, ...],
    "dropped": N}, dropped counting unverified replies past the first 100.

    Example: agentd fleet send set_mode --target node-b --args '{"mode": "rules_only"}' --key alice.key
    """
    args = _parse_json_arg(args_json, "--args")
    if not isinstance(args, dict):
        raise InputError("--args must be a JSON object")
    if config_file is not None:
        args["config"] = config_file.read_text()
    _send(config_path, as_json, cmd, target, args, key_path, operator, peer_key_opts, ttl, timeout_s)


def _send(config_path: Path | None, as_json: bool, cmd: str, target: str, args: dict[str, Any], key_path: Path,
          operator: str | None, peer_key_opts: tuple[str, ...], ttl: float, timeout_s: float) -> None:
    """Sign ``cmd`` with the operator's key, send it, print the replies; exit 0 only if all verified and ok."""
    import time

    from agentd.control.commands import new_command
    from agentd.ids import new_id
    from agentd.mesh.oneshot import known_keys, parse_peer_keys, send_command
    from agentd.trust.envelope import envelope
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import load_key_file

    loaded = _load(config_path)
    peer_keys = parse_peer_keys(peer_key_opts)
    key = load_key_file(key_path)
    name = operator or key_path.stem
    ident = new_id()
    payload = envelope("command", fleet=loaded.config.node.fleet, node=name, hlc=Clock().now(),
                       body=new_command(cmd, target=target, args=args, ttl_s=ttl), key=key, ident=ident)
    t0 = time.monotonic()
    outcome = send_command(loaded.config, payload, command_id=ident, target=target, timeout_s=timeout_s, peer_keys=peer_keys)
    if as_json:
        _emit_json(outcome.as_json())
    else:
        for r in outcome.replies:
            b = r.body
            if not r.verified:
                click.echo(f"{r.node}: UNVERIFIED ({r.reason})")
            else:
                click.echo(f"{r.node}: {'ok' if b['ok'] else 'REFUSED'}  {json.dumps(b.get('result', b.get('error')), default=str)[:300]}")
        answered, keyed = {r.node for r in outcome.replies}, known_keys(loaded.config, peer_keys)
        for node in outcome.missing:
            click.echo(f"{node}: {'no verified reply' if node in answered else 'no reply'}"
                       + ("" if node in keyed else f" (no key for it: add it to trust.peers or pass --peer-key {node}=KEY)"))
        if outcome.dropped:
            click.echo(f"{outcome.dropped} more unverified replies, not shown")
        n = len(outcome.replies)
        verified = sum(1 for r in outcome.replies if r.verified)
        click.echo(f"{n} repl{'y' if n == 1 else 'ies'} ({verified} verified) in {time.monotonic() - t0:.1f} s")
        if not outcome.replies:
            click.echo(f"no node answered: is {'any node' if target == 'all' else target} online (agentd peers), on this"
                       " broker and fleet, and does it list this operator key in trust.operators?", err=True)
    sys.exit(0 if outcome.ok else 1)


F = TypeVar("F", bound=Callable[..., Any])


def _signed_options(fn: F) -> F:
    """The options every signed command takes (as ``fleet send``)."""
    for option in reversed((
        click.option("--target", default="all", show_default=True, help="A node id, or all (each node gossips the write to the rest)."),
        click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The operator's private key file."),
        click.option("--operator", default=None, help="Operator name in trust.operators (default: the key file's name)."),
        click.option("--peer-key", "peer_key_opts", multiple=True, metavar="NODE=BASE64",
                     help="A node's public key (agentd keys show) to verify its replies with, besides trust.peers; repeatable."),
        click.option("--ttl", type=click.FloatRange(1, 86400), default=300, show_default=True,
                     help="Seconds the command stays valid (for a node to apply it first; the write itself replicates later too)."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 600), default=5, show_default=True, help="Seconds to wait for replies."),
    )):
        fn = option(fn)
    return fn


def _key_arg(key: str) -> str:
    from agentd.config.fleet_state import key_problem, owner_of

    problem = key_problem(key)
    if problem is not None:
        raise InputError(f"KEY {problem}")
    if owner_of(key) is not None:
        raise InputError(f"KEY {key!r} belongs to node {owner_of(key)!r}: only that node writes under nodes/<id>/ (from its"
                         " skills' fleet_state:); operators write site keys, e.g. site/maintenance")
    return key


@fleet.command("set")
@config_option
@json_option
@click.argument("key")
@click.argument("value")
@click.option("--expires-in", "expires_in", type=click.FloatRange(min=1, max=30 * 86400), default=None,
              help="Seconds the value holds, from the write's time (default: until set again or unset).")
@_signed_options
def fleet_set(config_path: Path | None, as_json: bool, key: str, value: str, expires_in: float | None, target: str, key_path: Path,
              operator: str | None, peer_key_opts: tuple[str, ...], ttl: float, timeout_s: float) -> None:
    """Set a site-wide fleet-state key on every node, signed with an operator key (role operator or admin).

    VALUE is JSON (true, 3, "text", {"until": "18:00"}); anything that is not JSON
    is taken as a string. Rules and guards read it with fleet_value("KEY"); it
    replicates to nodes that are offline now once they are back. The reply of
    each node says whether the write won (outcome applied) or a newer one holds
    the key (older). Exit codes as fleet send.

    Example: agentd fleet set site/maintenance '{"by": "alice"}' --expires-in 7200 --key alice.key
    """
    from agentd.config.fleet_state import value_problem
    from agentd.errors import Rejected
    from agentd.trust.untrusted import parse_json

    try:
        parsed: Any = parse_json(value, max_bytes=4096, what="VALUE")
    except Rejected as exc:
        if exc.reason != "not_json":
            raise
        parsed = value
    problem = value_problem(parsed)
    if problem is not None:
        raise InputError(f"VALUE: {problem}")
    args: dict[str, Any] = {"key": _key_arg(key), "value": parsed}
    if expires_in is not None:
        args["expires_in_s"] = expires_in
    _send(config_path, as_json, "fleet_set", target, args, key_path, operator, peer_key_opts, ttl, timeout_s)


@fleet.command("unset")
@config_option
@json_option
@click.argument("key")
@_signed_options
def fleet_unset(config_path: Path | None, as_json: bool, key: str, target: str, key_path: Path, operator: str | None,
                peer_key_opts: tuple[str, ...], ttl: float, timeout_s: float) -> None:
    """Clear a site-wide fleet-state key on every node (fleet_value then reads null), signed with an operator key.

    Example: agentd fleet unset site/maintenance --key alice.key
    """
    _send(config_path, as_json, "fleet_unset", target, {"key": _key_arg(key)}, key_path, operator, peer_key_opts, ttl, timeout_s)
