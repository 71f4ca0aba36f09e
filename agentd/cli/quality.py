"""`agentd eval`: measure a skill on a labelled set, path by path (docs/QUALITY.md).

Registered on the main group by ``agentd.cli`` (see ``register``). The runner is
``agentd.ops.evaluate``; the metrics are ``agentd.decision.quality``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

Decorator = Callable[[Callable[..., None]], Callable[..., None]]


def register(group: click.Group, cli: ModuleType) -> None:
    """Add `eval` to the `agentd` group; ``cli`` holds the shared options and helpers."""

    config_option: Decorator = cli.config_option
    json_option: Decorator = cli.json_option

    @click.command("eval")
    @config_option
    @json_option
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--skill", default=None, help="Only the items of this skill.")
    @click.option("--deadline-ms", type=click.FloatRange(0, 600_000, min_open=True), default=None,
                  help="Every skill's deadline for this run (default: the skill's own deadline_ms).")
    @click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N items.")
    @click.option("--items", "per_item", is_flag=True, help="With --json: every item's answer on every path, under results.")
    def eval_(config_path: Path | None, as_json: bool, file: Path, skill: str | None, deadline_ms: float | None,
              limit: int | None, per_item: bool) -> None:
        """Measure skills on a labelled set: the rules alone, each cascade stage alone and the
        full cascade, in-process (a throw-away database; the node's is never touched).

        FILE holds one JSON object a line: {"skill": ..., "data": {...}, "label": ACTION}, with an
        optional "id". Per path: coverage, accuracy, confusion matrix, calibration (ECE, 10 bins)
        and the risk-coverage curve (AURC); for the cascade also the share sent to a human and the
        fallback reasons. docs/QUALITY.md explains the figures.
        Example: agentd eval eval/in_distribution/freezer_simulator.jsonl --skill freezer_health
        """
        import asyncio

        from agentd.ops.evaluate import evaluate, read_items

        loaded = cli._load(config_path)
        items = read_items(file, loaded.config, skill=skill, limit=limit)
        report = asyncio.run(evaluate(loaded, items, deadline_ms=deadline_ms, per_item=per_item and as_json))
        report = {"file": str(file), **report}
        if as_json:
            cli._emit_json(report)
            return
        click.echo("\n".join(render(report)))

    group.add_command(eval_)


def render(report: dict[str, Any]) -> list[str]:
    """The text form of an eval report: a summary table per skill, then each path's details."""
    out: list[str] = []
    for sk in report["skills"]:
        labels = ", ".join(f"{a} {n}" for a, n in sk["labels"].items())
        out += [f"{sk['skill']}: {sk['items']} item(s) from {report['file']}, deadline {sk['deadline_ms']:g} ms",
                f"  labels: {labels}", ""]
        width = max(len("path"), *(len(p["path"]) for p in sk["paths"]))
        out.append(f"  {'path':<{width}}  {'coverage':>8}  {'accuracy':>8}  {'ECE':>6}  {'AURC':>6}  {'asked':>6}")
        for p in sk["paths"]:
            cal, curve, asked = p["calibration"], p["risk_coverage"], p.get("asked")
            out.append(f"  {p['path']:<{width}}  {_pct(p['coverage']):>8}  {_pct(p['accuracy']):>8}"
                       f"  {_num(cal['ece']) if cal else 'n/a':>6}  {_num(curve['aurc']) if curve else 'n/a':>6}"
                       f"  {_pct(asked['share']) if asked else '-':>6}")
        for p in sk["paths"]:
            out += ["", *_details(p, sk["actions"])]
        out.append("")
    return out


def _details(p: dict[str, Any], actions: list[str]) -> list[str]:
    head = f"{p['path']}: accuracy {_pct(p['accuracy'])} on {p['covered']} covered of {p['items']} (coverage {_pct(p['coverage'])})"
    out = [head]
    if p["path"].startswith("stage:"):
        shadow = ", shadow" if p["shadow"] else ""
        out.append(f"  model {p['model']} version {p['version']}{shadow}, min_confidence {p['min_confidence']:g};"
                   f" answered {p['answered']}, raw accuracy {_pct(p['raw_accuracy'])} (every answer, gate or not)")
        out.append("  outcomes: " + _kv(p["outcomes"]))
        if p.get("missing_reason"):
            out.append(f"  missing: {p['missing_reason']}")
    else:
        out.append("  sources: " + _kv(p["sources"]))
        if p["fallback_reasons"]:
            out.append("  fallback reasons: " + _kv(p["fallback_reasons"]))
        asked = p["asked"]
        line = f"  asked a human: {asked['count']} ({_pct(asked['share'])})"
        if asked["reasons"]:
            line += ", why: " + _kv(asked["reasons"])
        if "asked_not_by_rules" in p:
            line += f"; not asked by the rules alone: {p['asked_not_by_rules']['count']} ({_pct(p['asked_not_by_rules']['share'])})"
        out.append(line)
        if p["guards"]:
            out.append("  guards: " + _kv(p["guards"]))
        if p["rule_errors"]:
            out.append(f"  rule errors: {p['rule_errors']}")
    out += _confusion(p["confusion"], actions)
    cal = p["calibration"]
    if p["path"] == "rules":
        out.append("  calibration, risk-coverage: n/a (rules give no confidence)")
    elif cal is None:
        out.append("  calibration, risk-coverage: n/a (no answer with a confidence)")
    else:
        what = "model-decided items" if p["path"] == "cascade" else "answers"
        out.append(f"  calibration over {cal['n']} {what}: ECE {_num(cal['ece'])}, MCE {_num(cal['mce'])}")
        out.append(f"    {'confidence':<10}  {'n':>5}  {'mean':>6}  {'acc':>6}")
        for b in cal["bins"]:
            out.append(f"    {b['lo']:.1f}-{b['hi']:.1f}     {b['count']:>5}  {_num(b['confidence']):>6}  {_pct(b['accuracy']):>6}")
        curve = p["risk_coverage"]
        out.append(f"  risk-coverage over {curve['n']} {what}, most confident first: AURC {_num(curve['aurc'])}")
        out.append(f"    {'coverage':<10}  {'k':>5}  {'risk':>6}  {'conf >=':>7}")
        for pt in curve["points"]:
            out.append(f"    {_pct(pt['coverage']):<10}  {pt['k']:>5}  {_pct(pt['risk']):>6}  {_num(pt['threshold']):>7}")
    return out


def _confusion(matrix: dict[str, dict[str, int]], actions: list[str]) -> list[str]:
    cols = list(dict.fromkeys([*actions, *(c for row in matrix.values() for c in row)]))
    w = max(8, *(len(c) for c in cols))
    out = ["  confusion (rows: label, columns: predicted; covered items)",
           "    " + " " * w + "".join(f"  {c:>{w}}" for c in cols)]
    for label, row in matrix.items():
        out.append(f"    {label:<{w}}" + "".join(f"  {row.get(c, 0):>{w}}" for c in cols))
    return out


def _kv(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
