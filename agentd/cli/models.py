"""`agentd model` (model cards, the input statistics behind the out-of-distribution gate), and what
the node learns about its models: `agentd calibrate`, `agentd promote`, `agentd demote`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agentd.cli._common import _json_or, _load, _table, config_option, json_option, main
from agentd.errors import AgentdError


@main.group()
def model() -> None:
    """Model commands."""


@model.command("card")
@config_option
@json_option
@click.argument("name")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The training inputs: JSON Lines, one row (or eval line) a line.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the card (default: the model file's path with .card.json).")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="Neighbours of the joint score.")
@click.option("--quantile", type=click.FloatRange(0.5, 0.9999), default=0.99, show_default=True,
              help="Share of training rows inside the joint threshold.")
def model_card(config_path: Path | None, as_json: bool, name: str, data: Path, out: Path | None, k: int, quantile: float) -> None:
    """Write the input card of model NAME from its training data; set `card:` on the model to use it.

    Example: agentd model card freezer_anomaly --data training.jsonl
    """
    from agentd.ops.model_card import write_card

    loaded = _load(config_path)
    try:
        cfg = loaded.config.model(name)
        inputs = list(getattr(cfg, "inputs", []))
        if not inputs:
            raise AgentdError(f"model {name!r} ({cfg.backend}) has no numeric `inputs`: an input card is for tabular models")
        target = out or Path(str(getattr(cfg, "path", f"{name}.onnx"))).with_suffix(".card.json")
        result = write_card(name, inputs, data, target, k=k, quantile=quantile)
    except AgentdError as exc:
        click.echo(f"agentd model card: {exc}", err=True)
        sys.exit(2)
    if _json_or(as_json, result):
        return
    _table(f"input card of {name}: {target}", ["field", "training min", "training max"],
           ((f, lo, hi) for f, (lo, hi) in result["ranges"].items()))
    click.echo(f"{result['samples']} rows, {result['reference_rows']} kept for the joint score (threshold {result['threshold']:g})")
    click.echo(f"on the model: card: {target}  card_sha256: {result['card_sha256']}")


@main.command()
@config_option
@json_option
@click.option("--skill", default=None, help="Only the stages of this skill.")
@click.option("--min-labels", type=click.IntRange(5, 100_000), default=20, show_default=True,
              help="Fewest labelled answers a model version needs to be fitted.")
def calibrate(config_path: Path | None, as_json: bool, skill: str | None, min_labels: int) -> None:
    """Fit each model version's confidence to the node's labels (a temperature); the gates read it from now on.

    Prints the ECE before and after on the labels, and on the newest 30 % held out from a
    fit on the older 70 %. Audited. The daemon must be running.
    Example: agentd calibrate --skill operator_request
    """
    from agentd.control.client import request

    loaded = _load(config_path)
    req: dict[str, object] = {"op": "calibrate", "min_labels": min_labels, "by": _who(None)}
    if skill is not None:
        req["skill"] = skill
    result = request(loaded.config.socket_path, req)
    if _json_or(as_json, result):
        return

    def held(r: dict[str, object]) -> str:
        h = r.get("held_out")
        return f"{h['ece_before']:g} -> {h['ece_after']:g} ({h['labels']})" if isinstance(h, dict) else "-"

    _table("calibration", ["model@version", "labels", "temperature", "ECE before", "ECE after", "held out ECE (labels)"],
           ((r["model"], r["labels"], r.get("temperature", "-"), r.get("ece_before", "-"), r.get("ece_after", "-"),
             held(r) if r["fitted"] else r.get("reason", "")) for r in result["models"]))


def _who(by: str | None) -> str:
    import getpass

    return by or f"local:{getpass.getuser()}"


def _stage_state(state: str, config_path: Path | None, as_json: bool, skill: str, stage: int, by: str | None) -> None:
    from agentd.control.client import request

    loaded = _load(config_path)
    result = request(loaded.config.socket_path, {"op": "set_stage_state", "skill": skill, "stage": stage, "state": state, "by": _who(by)})
    if not _json_or(as_json, result):
        click.echo(f"{skill} stage {stage} ({result['model']}): {result['from']} -> {result['to']} by {result['by']}")


def _stage_state_command(name: str, state: str, doc: str) -> None:
    """Register `agentd NAME SKILL [--stage N] [--by WHO]`, which sets a cascade stage's state."""

    @main.command(name=name, help=doc)
    @config_option
    @json_option
    @click.argument("skill")
    @click.option("--stage", type=click.IntRange(0, 63), default=0, show_default=True, help="The cascade index.")
    @click.option("--by", default=None, help="Who (default: the local user).")
    def command(config_path: Path | None, as_json: bool, skill: str, stage: int, by: str | None) -> None:
        _stage_state(state, config_path, as_json, skill, stage, by)


_stage_state_command("promote", "acting", """Let a cascade stage act (it was a shadow); stored and audited, until demoted.

    Example: agentd promote operator_request --stage 0
    """)
_stage_state_command("demote", "shadow", """Make a cascade stage a shadow: it still answers (for `agentd report`), never acts.

    Example: agentd demote freezer_health --stage 1
    """)
