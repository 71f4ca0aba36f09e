"""The one registry of the node's commands: for the local socket, the fleet path and the CLI's choices.

Kept free of heavy imports, so `agentd --help` can list the fleet commands. The handlers
are in ``agentd.daemon.commands`` (one per name); the checks of a signed command in
``agentd.control.commands``.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may


@dataclass(frozen=True)
class Command:
    """One command of the node: who may send it as a signed fleet command, and whether the local socket takes it."""

    name: str
    role: str | None  # the least role that may send it over MQTT; None: local socket only
    local: bool  # the local socket (the CLI) takes it
    summary: str


# The one registry of commands, for the socket, the fleet path and the CLI's choices
# (the handlers are in agentd.daemon.commands, one per name).
REGISTRY: dict[str, Command] = {c.name: c for c in (
    Command("status", "viewer", True, "mode, lifecycle, models, counts"),
    Command("approve", "operator", True, "approve a pending decision"),
    Command("reject", "operator", True, "reject a pending decision (with an action: the right one, a label)"),
    Command("set_mode", "operator", True, "auto, rules_only, observe or manual"),
    Command("quarantine", "operator", False, "observe only"),
    Command("label", "operator", True, "record the right action for a decision"),
    Command("fleet_set", "operator", False, "set a site-wide fleet-state key, replicated to every node"),
    Command("fleet_unset", "operator", False, "clear a site-wide fleet-state key"),
    Command("reload", "admin", True, "re-read the config file"),
    Command("set_config", "admin", False, "a whole config document, rolled back if it fails"),
    Command("set_stage", "admin", False, "the lifecycle stage stamped on decisions"),
    Command("activate_model", "admin", False, "switch a cascade stage to another declared model"),
    Command("set_stage_state", "admin", True, "make a cascade stage acting or shadow"),
    Command("calibrate", "admin", True, "fit each model version's confidence to the node's labels"),
    Command("clear_peer_flag", "admin", True, "clear a peer's audit flag (rolled back, forked) after investigating"),
    Command("submit", None, True, "decide an event"),
    Command("approvals", None, True, "pending approvals"),
    Command("ping", None, True, "is the daemon there"),
)}
ROLE_COMMANDS: dict[str, frozenset[str]] = {
    role: frozenset(c.name for c in REGISTRY.values() if c.role is not None and ROLES.index(c.role) <= ROLES.index(role))
    for role in ROLES
}
COMMANDS = ROLE_COMMANDS["admin"]  # every fleet command
# The commands that write the fleet state: the operator's signed command is itself the write,
# stored and gossiped whole so that every node checks the operator's signature and role.
STATE_COMMANDS = ("fleet_set", "fleet_unset")
LOCAL_OPS = tuple(c.name for c in REGISTRY.values() if c.local)
