"""The exception tree of agentd.

Callers catch ``AgentdError``; the CLI maps it to one stderr line and an exit code.

    AgentdError
    ├── ConfigError    a config file or value is invalid (exit 2)
    ├── InputError     an event, request or argument is invalid (exit 2)
    │   └── Rejected   untrusted bytes refused at the wire; ``reason`` is a code for counting
    ├── StateError     the SQLite store is unusable or a record is missing
    │   └── NotFound   a decision/approval id does not exist (exit 1)
    ├── ModelError     a model cannot be loaded or refused (hash, memory, runtime)
    ├── RuleError      a CEL rule or guard failed to compile or evaluate
    ├── MeshError      MQTT / daemon socket trouble
    │   └── Unreachable  the daemon is not running (exit 3)
    └── TrustError     keys, signatures, permissions
"""

from __future__ import annotations


class AgentdError(Exception):
    """Base class of every error agentd raises on purpose."""

    exit_code = 1


class ConfigError(AgentdError):
    """A config file or value is invalid."""

    exit_code = 2


class InputError(AgentdError):
    """An event, request or CLI argument is invalid."""

    exit_code = 2
    reason = "invalid"  # the code a counter files it under


class Rejected(InputError):
    """Untrusted input was refused (agentd.untrusted, envelopes, commands); ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class StateError(AgentdError):
    """The store cannot do what was asked."""


class NotFound(StateError):
    """A decision, approval or event id does not exist."""


class ModelError(AgentdError):
    """A model cannot be loaded or run."""


class RuleError(AgentdError):
    """A rule or guard expression failed to compile or evaluate."""

    exit_code = 2


class MeshError(AgentdError):
    """MQTT or local socket trouble."""


class Unreachable(MeshError):
    """The daemon is not running or its socket does not answer."""

    exit_code = 3


class TrustError(AgentdError):
    """Keys, signatures or permissions are wrong."""
