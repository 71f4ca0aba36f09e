"""The one command registry: the role table of DESIGN section 7, and every name has one handler."""

from __future__ import annotations

from agentd.control.registry import COMMANDS, LOCAL_OPS, REGISTRY, ROLE_COMMANDS
from agentd.daemon.commands import NodeCommands


def test_roles_allow_what_design_section_7_says() -> None:
    assert ROLE_COMMANDS["viewer"] == {"status"}
    assert ROLE_COMMANDS["operator"] == {"status", "approve", "reject", "label", "set_mode", "quarantine",
                                         "fleet_set", "fleet_unset"}
    assert ROLE_COMMANDS["admin"] == ROLE_COMMANDS["operator"] | {"reload", "set_config", "set_stage", "activate_model", "set_stage_state", "calibrate",
                                                                            "clear_peer_flag"}
    assert ROLE_COMMANDS["admin"] == COMMANDS
    assert set(LOCAL_OPS) == {"submit", "status", "approve", "reject", "label", "set_mode", "reload", "approvals", "ping",
                              "set_stage_state", "calibrate", "clear_peer_flag"}


def test_every_registered_command_has_a_handler() -> None:
    handlers = {name[1:] for name in dir(NodeCommands) if name.startswith("_") and not name.startswith("__")}
    assert set(REGISTRY) <= handlers
