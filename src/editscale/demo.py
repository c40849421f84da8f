"""The main job: ``editscale demo``. Sequential editing of the built-in testbed with several methods on one
seeded sample, and the report that overlays them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from editscale.errors import RunStateError
from editscale.experiment.config import RunConfig, parse_config
from editscale.experiment.runner import resume, run_experiment
from editscale.experiment.store import DB_NAME, RunStore
from editscale.report.html import write_report

# ROME and, beside it, ENCORE (a method built to resist forgetting; of the lifelong methods the one that
# measured best on testbed:demo, see README), then r-ROME, MEMIT and FT-L
DEMO_METHODS = ("rome", "encore", "r-rome", "memit", "ft-l")


def demo_config(method: str, edits: int) -> RunConfig:
    """The demo's run: sequential edits of testbed:demo with its own facts, the issue's smallest config."""
    return parse_config({"model": "testbed:demo", "method": method, "data": "testbed:demo", "edits": edits,
                         "batch": 1, "forget_every": 10, "downstream_every": 50, "seed": 0})


def run_demo(out_dir: str | Path, edits: int = 300, methods: Sequence[str] = DEMO_METHODS, *,
             progress: bool | None = None) -> tuple[Path, list[Path], int]:
    """Build testbed:demo if needed, run each method on the same seeded sample into ``out_dir/METHOD``
    (continuing runs a killed demo left), and write the report into ``out_dir/report``; returns report.html,
    the run directories and how many runs were complete already (an earlier demo's)."""
    from editscale.cache import staged_output
    from editscale.names import resolve_model_path

    resolve_model_path("testbed:demo")
    out = Path(out_dir)
    dirs, done_before = [], 0
    for method in methods:
        cfg, run_dir = demo_config(method, edits), out / method
        if (run_dir / DB_NAME).exists():
            with RunStore.in_dir(run_dir, readonly=True) as store:
                stored = store.meta().get("config")
            if stored != cfg.to_dict():
                raise RunStateError(f"{run_dir} holds a run with another config (e.g. another number of edits); "
                                    "choose another --out")
            with RunStore.in_dir(run_dir, readonly=True) as store:
                done_before += store.meta().get("status") == "complete"
            resume(run_dir, progress=progress)
        else:
            run_experiment(cfg, run_dir, progress=progress)
        dirs.append(run_dir)
    with staged_output(out / "report", "report") as tmp:
        name = write_report(dirs, tmp).name
    return out / "report" / name, dirs, done_before
