"""`agentd model`: model cards (the input statistics behind the out-of-distribution gate)."""

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
