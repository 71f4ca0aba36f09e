"""`agentd report`: per stage and lifecycle stage/release, how each model does against the acted decisions.

Registered on the main group by ``agentd.cli`` (see ``register``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click

Decorator = Callable[[Callable[..., None]], Callable[..., None]]


def register(group: click.Group, cli: ModuleType) -> None:
    """Add `report` to the `agentd` group; ``cli`` holds the shared options and helpers."""

    config_option: Decorator = cli.config_option
    json_option: Decorator = cli.json_option

    @click.command()
    @config_option
    @json_option
    @click.option("--skill", default=None, help="Only this skill.")
    @click.option("--hours", type=click.FloatRange(0, 24 * 3650, min_open=True), default=None, help="Only the last H hours (default: all kept).")
    @click.option("--stage", type=click.Choice(["dev", "canary", "prod"]), default=None, help="Lifecycle stage.")
    @click.option("--release", default=None, help="Lifecycle release.")
    def report(config_path: Path | None, as_json: bool, skill: str | None, hours: float | None, stage: str | None, release: str | None) -> None:
        """Every model stage, acted and shadow, per version and lifecycle stage/release: calls,
        agreement with the acted decision and with the rules, confidence (p10/p50/p90), latency
        (p50/p99), outcomes; per skill the share of decisions sent to a human and why.

        Use it to promote a shadow or canary model on evidence. Reads the database directly.
        Example: agentd report --skill operator_request --hours 24
        """
        from agentd.state import queries, reports

        loaded = cli._load(config_path)
        conn = queries.open_readonly(loaded.config.data_dir)
        since = time.time() - hours * 3600 if hours else None
        filters = queries.DecisionFilter(skill=skill, since=since, stage=stage, release=release)
        rows = reports.report(conn, filters)
        skills = reports.decision_summary(conn, filters)
        if as_json:
            cli._emit_json({"stages": rows, "skills": skills})
            return
        for sk in skills:
            asked = ", ".join(f"{k} {v}" for k, v in sorted(sk["asked_because"].items())) or "none"
            click.echo(f"{sk['skill']}: {sk['decisions']} decisions; asked a human {sk['asked']} ({sk['asked_share']:.0%}): {asked}")
            click.echo("  fallback reasons " + (" ".join(f"{k}:{v}" for k, v in sorted(sk["fallback_reasons"].items())) or "none"))
        if not rows:
            click.echo("no model stage has run yet" + (f" for skill {skill}" if skill else ""))
            return

        def fmt(v: float | None, pct: bool = False) -> str:
            return "-" if v is None else (f"{v:.0%}" if pct else f"{v:g}")

        # one block per stage: readable in an 80-column terminal whatever the names
        for r in rows:
            click.echo(f"{r['skill']}  {r['model']} (version {r['version']})  {r['role']}  {r['stage']}/{r['release']}")
            conf = "/".join(fmt(r["confidence"][k]) for k in ("p10", "p50", "p90"))
            lat = "/".join(fmt(r["latency_ms"][k]) for k in ("p50", "p99"))
            click.echo(f"  calls {r['calls']}  answered {r['answered']}  agreement {fmt(r['agreement'], True)}"
                       + (f"  disagreed with the rules {r['disagreements']} of {r['beside_rules']}" if r["beside_rules"] else ""))
            click.echo(f"  confidence p10/p50/p90 {conf}  latency p50/p99 {lat} ms")
            click.echo("  outcomes " + " ".join(f"{k}:{v}" for k, v in sorted(r["outcomes"].items())))

    group.add_command(report)
