"""`agentd report`: per stage and lifecycle stage/release, how each model does against the acted decisions;
per model version and rule set, how each does on the decisions people labelled (``agentd.ops.label_quality``).

Registered on the main group by ``agentd.cli`` (see ``register``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

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

        On the labelled decisions (`agentd label`, approvals, rejections with --action; the
        latest label counts), per model version and for the rules: accuracy, confusion,
        agreement with the rules, calibration (ECE, 10 bins) and risk-coverage (AURC).

        Use it to promote a shadow or canary model on evidence. Reads the database directly.
        Example: agentd report --skill operator_request --hours 24
        """
        from agentd.ops import label_quality
        from agentd.state import queries, reports

        loaded = cli._load(config_path)
        conn = queries.open_readonly(loaded.config.data_dir)
        since = time.time() - hours * 3600 if hours else None
        filters = queries.DecisionFilter(skill=skill, since=since, stage=stage, release=release)
        rows = reports.report(conn, filters)
        skills = reports.decision_summary(conn, filters)
        labelled = label_quality.report(conn, loaded.config, filters)
        if as_json:
            cli._emit_json({"stages": rows, "skills": skills, "labelled": labelled})
            return
        for sk in skills:
            asked = ", ".join(f"{k} {v}" for k, v in sorted(sk["asked_because"].items())) or "none"
            click.echo(f"{sk['skill']}: {sk['decisions']} decisions; asked a human {sk['asked']} ({sk['asked_share']:.0%}): {asked}")
            click.echo("  fallback reasons " + (" ".join(f"{k}:{v}" for k, v in sorted(sk["fallback_reasons"].items())) or "none"))
        if not rows:
            click.echo("no model stage has run yet" + (f" for skill {skill}" if skill else ""))
        # one block per stage: readable in an 80-column terminal whatever the names
        for r in rows:
            click.echo(f"{r['skill']}  {r['model']} (version {r['version']})  {r['role']}  {r['stage']}/{r['release']}")
            conf = "/".join(fmt(r["confidence"][k]) for k in ("p10", "p50", "p90"))
            lat = "/".join(fmt(r["latency_ms"][k]) for k in ("p50", "p99"))
            click.echo(f"  calls {r['calls']}  answered {r['answered']}  agreement {fmt(r['agreement'], True)}"
                       + (f"  disagreed with the rules {r['disagreements']} of {r['beside_rules']}" if r["beside_rules"] else ""))
            click.echo(f"  confidence p10/p50/p90 {conf}  latency p50/p99 {lat} ms")
            click.echo("  outcomes " + " ".join(f"{k}:{v}" for k, v in sorted(r["outcomes"].items())))
        click.echo("\n".join(labelled_lines(labelled)))

    group.add_command(report)


def fmt(v: float | None, pct: bool = False) -> str:
    """A figure for the text report: a share as a percentage, '-' for none."""
    return "-" if v is None else (f"{v:.0%}" if pct else f"{v:g}")


def labelled_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The labelled part of the text report: per row a line of figures and its confusion matrix."""
    if not rows:
        return ["", "labelled decisions: none yet (agentd label ID ACTION; approvals and rejections with --action label too)"]
    out = ["", "labelled decisions (each counts with its latest label):"]
    for r in rows:
        name = f"rules (config {r['version']})" if r["role"] == "rules" else f"{r['model']} (version {r['version']})  {r['role']}"
        sources = ", ".join(f"{k} {v}" for k, v in r["label_sources"].items())
        out.append(f"{r['skill']}  {name}: {r['labelled']} labelled ({sources})")
        line = f"  answered {r['answered']}: accuracy {fmt(r['accuracy'], True)} ({r['correct']} right)"
        if r["role"] == "rules":
            out.append(line)
        else:
            out.append(line + f"; passed the gates {r['accepted']}: accuracy {fmt(r['accepted_accuracy'], True)}")
            line = f"  rules agree {fmt(r['rules_agreement'], True)} (of {r['beside_rules']})"
            cal, curve = r["calibration"], r["risk_coverage"]
            if cal is not None and curve is not None:
                risk = next((p["risk"] for p in curve["points"] if p["coverage"] == 0.5), None)
                line += f"  ECE {cal['ece']:.3f}  AURC {curve['aurc']:.3f}  risk at 50% coverage {fmt(risk)}"
            out.append(line)
        matrix: dict[str, dict[str, int]] = r["confusion"]
        if matrix:
            cols = list(matrix)
            width = max(len(c) for c in [*cols, "label \\ answer"])
            out.append("  " + "label \\ answer".ljust(width) + "".join(f"  {c:>{len(c)}}" for c in cols))
            out.extend("  " + row.ljust(width) + "".join(f"  {matrix[row][c]:>{len(c)}}" for c in cols) for row in cols)
    return out
