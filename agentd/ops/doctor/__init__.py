"""`agentd doctor`: independent, quick checks of everything a node needs, each with its fix.

Every check is a function of the (possibly invalid) config that returns ``Check`` results;
one check failing or crashing never stops the others. A check that cannot run without
something another check found broken says so as ``skip``. Nothing here writes to the node.
The checks live by what they check: ``config`` (and the secret files it names), ``models``
(files and runtimes), ``storage`` (database, audit chain, disk), ``broker``, ``system``
(clock, service).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agentd.ops.doctor.broker import check_broker
from agentd.ops.doctor.config import check_config, check_keys
from agentd.ops.doctor.findings import Check, Context, fail, skip
from agentd.ops.doctor.models import check_models, check_runtimes
from agentd.ops.doctor.storage import check_database, check_disk
from agentd.ops.doctor.system import check_clock, check_service

__all__ = ["Check", "run_checks"]

NEEDS_CONFIG: tuple[tuple[str, Callable[[Context], list[Check]]], ...] = (
    ("keys", check_keys),
    ("models", check_models),
    ("database", check_database),
    ("disk", check_disk),
    ("broker", check_broker),
    ("clock", check_clock),
)


def run_checks(path: Path) -> list[Check]:
    """Every check, in order; a crash in one is reported as its failure and the rest still run."""
    ctx = Context(path=path)
    results = _guarded("config", check_config, ctx)
    for name, fn in NEEDS_CONFIG:
        if ctx.loaded is None:
            results.append(skip(name, "needs a valid config"))
        else:
            results.extend(_guarded(name, fn, ctx))
    results.extend(_guarded("runtimes", check_runtimes, ctx))
    results.extend(_guarded("service", check_service, ctx))
    return results


def _guarded(name: str, fn: Callable[[Context], list[Check]], ctx: Context) -> list[Check]:
    try:
        return fn(ctx)
    except Exception as exc:  # a doctor that dies on the first odd finding is no use; report it and go on
        return [fail(name, f"the check itself failed: {type(exc).__name__}: {exc}", "this is a bug in agentd doctor; please report it with this line")]
