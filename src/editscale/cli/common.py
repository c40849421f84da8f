"""Shared CLI helpers."""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def positive_finite(value: float) -> float:
    """A CLI callback: refuse NaN, infinities and values <= 0 at parse, as a usage error (one line)."""
    import typer

    if value is None:
        return value
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"must be a positive finite number, got {value}")
    return value


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (NaN and infinities become null)."""
    from editscale.json_values import json_ready

    sys.stdout.write(json.dumps(json_ready(obj)) + "\n")


def print_scores(title: str, columns: dict[str, dict]) -> None:
    """A table of CounterFact summaries (rows: metrics, labelled and formatted as their declarations in
    ``editscale.eval.metrics`` say; one column per named summary)."""
    from rich.console import Console
    from rich.table import Table

    from editscale.eval.metrics import METRICS

    console = Console()
    console.print(title)
    table = Table()
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    first = next(iter(columns.values()))
    table.add_row("n", *[str(c.get("n", "")) for c in columns.values()])
    for key in [k for k in first if k != "n"]:
        metric = METRICS.get(key)
        cells = []
        for c in columns.values():
            v = c.get(key)
            if metric is not None:
                cells.append(metric.format(v))
            else:  # the Score
                cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}")
        label = metric.label if metric is not None else key
        table.add_row(label + (" %" if metric is None or metric.percent else ""), *cells)
    console.print(table)
    print("(% rows in percent; magnitudes as probability differences; entropy in bits)")
