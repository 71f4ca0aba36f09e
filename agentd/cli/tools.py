"""Tool commands of the `agentd` CLI: bench and demo (the only importers of agentd.devtools)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    pass
from agentd.cli._common import _json_or, _load, _table, config_option, json_option, main


@main.command()
@config_option
@json_option
@click.option("--only", type=click.Choice(["rules", "onnx", "deadline", "throughput", "footprint", "mqtt", "convergence", "llm", "accuracy"]), default=None, help="Run one part.")
@click.option("--n", "samples", type=click.IntRange(50, 1_000_000), default=2000, show_default=True, help="Samples per latency part.")
def bench(config_path: Path | None, as_json: bool, only: str | None, samples: int) -> None:
    """Latency and throughput of each decision path on this box, with baselines from the same run.

    Example: agentd bench --json
    """
    from agentd.devtools.bench import run_bench

    loaded = _load(config_path)
    result = run_bench(loaded, only=only, samples=samples)
    if _json_or(as_json, result):
        return
    _table("agentd bench", ["figure", "value"], ((k, v) for k, v in result.items()))


@main.command()
@config_option
@click.option("--nodes", type=click.IntRange(1, 20), default=3, show_default=True, help="Nodes in the fleet; 1 runs a single node without a broker.")
@click.option("--seconds", type=click.FloatRange(0, 86400), default=0, help="Stop after this long (default: until Ctrl-C).")
@click.option("--rate", type=click.FloatRange(0.1, 1000), default=5.0, show_default=True, help="Simulated events per second, per node.")
def demo(config_path: Path | None, nodes: int, seconds: float, rate: float) -> None:
    """A small fleet on this machine: a private Mosquitto, NODES nodes with their own keys and
    data, simulated freezer telemetry, and a live view of decisions and gossip.

    The nodes are derived from the config (its skills and models); their data goes to
    <data_dir>/demo. Example: agentd demo --nodes 3 --seconds 60
    """
    loaded = _load(config_path)
    if nodes == 1:
        from agentd.devtools.demo import run_demo

        run_demo(loaded, seconds=seconds, rate=rate)
        return
    from agentd.devtools.fleet_demo import run_fleet_demo

    run_fleet_demo(loaded, nodes=nodes, seconds=seconds, rate=rate)
