"""The report: plots and the HTML page from run databases (synthetic runs, no editing)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from editscale.cli import app
from editscale.errors import RunStateError
from editscale.eval.metrics import edit_metric_names
from editscale.experiment.store import RunStore
from editscale.report.html import downstream_rows, write_report
from editscale.report.plots import load_run, trailing_mean

PLOTS = {"proficiency.png", "generation.png", "forgetting.png", "downstream.png", "distance.png"}


def fake_run(run_dir, method: str, n: int = 60, flagged: int | None = 40) -> None:
    """A run database as the runner writes it, with made-up numbers."""
    rng = np.random.default_rng(0)
    with RunStore.in_dir(run_dir, create=True) as store:
        store.set_meta(config={"model": "testbed:tiny", "method": {"name": method, "hparams": {}}}, status="complete")
        store.record_downstream(0, 0, {"sst2": {"f1": 0.9, "mcc": 0.8}, "rte": {"f1": 0.8, "mcc": 0.05}})
        for u in range(1, n + 1):
            scores = {m: float(rng.random() < 0.9) for m in edit_metric_names()}
            events = ([{"edit_idx": u, "kind": "flagged", "rule": "update_norm", "value": 9.0, "threshold": 1.0}]
                      if u == flagged else [])
            dist = [{"param": f"transformer.h.{layer}.mlp.c_proj.weight", "layer": layer, "n_neurons": 64,
                     "n_elements": 64 * 16, "frobenius": 0.1 * u * (layer + 1),
                     "distance_per_element": 0.1 * u * (layer + 1) / 1024,
                     "distance_per_neuron": 0.1 * u * (layer + 1) / 64, "update_norm": 0.1} for layer in (0, 1)]
            values = {"seconds": 0.01, "compute_seconds": 0.005, "entropy": 3.0, "probe_neighborhood": 0.9}
            store.record_update(u, u, values, False, [{"edit_idx": u, "case_id": str(u), **scores}], dist, events)
            if u % 10 == 0:
                store.record_recheck(u, u, n_correct=u, n_forgotten=u // 5,
                                     holds_prob={e: e % 3 != 0 for e in range(1, u)},
                                     correct={e: e % 5 != 0 for e in range(1, u)})
            if u % 20 == 0:
                store.record_downstream(u, u, {"sst2": {"f1": 0.9 - u / 100}, "rte": {"f1": 0.8}})


def test_report_of_two_runs(tmp_path):
    fake_run(tmp_path / "a", "rome")
    fake_run(tmp_path / "b", "memit", flagged=None)
    page = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == PLOTS
    html = page.read_text()
    assert all(f'src="{p}"' in html for p in PLOTS)
    assert '">rome</td>' in html and '">memit</td>' in html  # the run cell, its directory as tooltip
    assert f'title="{tmp_path / "a"}"' in html
    assert "<td>40</td>" in html  # rome's first flagged edit
    assert "<th>forgotten %</th>" in html and "<th>forgotten (P) %</th>" in html
    assert "<td>20.0</td>" in html  # the paper's forgetting at the last re-check: 12 of 60
    # skill F1: sst2 0.9 -> 0.3; rte is left out (unedited MCC 0.05, at chance)
    assert "<td>-0.600 (worst: sst2 -0.600)</td>" in html
    # final distance over both matrices: sqrt(6^2 + 12^2) / (2 * 1024); the method's 0.005 s per edit
    from editscale.experiment.runner import summarize

    s = summarize(tmp_path / "a")
    assert s["distance_per_element"] == pytest.approx((36 + 144) ** 0.5 / 2048)
    assert s["method_seconds_per_edit"] == pytest.approx(0.005)
    assert "<th>distance / element</th>" in html and "<td>0.006551</td>" in html and "<td>0.01</td>" in html


def test_report_downstream_table_flags_tasks_at_chance(tmp_path):
    fake_run(tmp_path / "a", "rome")
    rows = {r["task"]: r for r in downstream_rows(load_run(tmp_path / "a")) if r["metric"] == "f1"}
    assert rows["sst2"]["unedited"] == "0.900" and rows["sst2"]["last"] == "0.300 (60 edits)"
    assert rows["sst2"]["change"] == "-0.600" and rows["sst2"]["note"] == ""
    assert rows["rte"]["change"] == "+0.000" and "at chance (MCC 0.05)" in rows["rte"]["note"]
    html = write_report([tmp_path / "a"]).read_text()
    assert "<h2>Downstream</h2>" in html and "at chance (MCC 0.05)" in html


def test_report_tabulates_the_known_facts_margin_beside_retention(tmp_path):
    """The known facts' mean margin follows their retention in the downstream table; runs recorded before
    the margin existed have only the retention row."""
    fake_run(tmp_path / "a", "rome")
    fake_run(tmp_path / "old", "rome")
    for name, results in (("a", [{"retention": 1.0, "margin": 1.5}, {"retention": 0.9, "margin": 1.2}]),
                          ("old", [{"retention": 1.0}, {"retention": 0.9}])):
        with RunStore.in_dir(tmp_path / name) as store:
            for u, r in zip((20, 40), results):
                store.record_downstream(u, u, {"known-facts": {**r, "n": 10}})
    rows = [(r["task"], r["metric"], r["unedited"], r["last"], r["change"])
            for r in downstream_rows(load_run(tmp_path / "a")) if r["task"] == "known-facts"]
    assert rows == [("known-facts", "retention", "1.000 (20 edits)", "0.900 (40 edits)", "-0.100"),
                    ("known-facts", "margin", "1.500 (20 edits)", "1.200 (40 edits)", "-0.300")]
    assert [r["metric"] for r in downstream_rows(load_run(tmp_path / "old")) if r["task"] == "known-facts"] == [
        "retention"]


def test_report_tabulates_a_few_shot_tasks_mcc_beside_its_f1(tmp_path):
    """A classification task's MCC follows its F1 (F1 0.67 can be one label answered throughout: MCC says so);
    the note that the unedited model is at chance is on the F1 row only."""
    fake_run(tmp_path / "a", "rome")  # sst2 F1 0.9, MCC 0.8 unedited; rte F1 0.8, MCC 0.05 (at chance)
    with RunStore.in_dir(tmp_path / "a") as store:
        store.record_downstream(70, 70, {"sst2": {"f1": 0.66, "mcc": 0.01}, "rte": {"f1": 0.8, "mcc": 0.02}})
    rows = [(r["task"], r["metric"], r["unedited"], r["last"], r["change"], bool(r["note"]))
            for r in downstream_rows(load_run(tmp_path / "a"))]
    assert [r[1:] for r in rows if r[0] == "sst2"] == [("f1", "0.900", "0.660 (70 edits)", "-0.240", False),
                                                       ("mcc", "0.800", "0.010 (70 edits)", "-0.790", False)]
    assert [r[1:] for r in rows if r[0] == "rte"] == [("f1", "0.800", "0.800 (70 edits)", "+0.000", True),
                                                      ("mcc", "0.050", "0.020 (70 edits)", "-0.030", False)]


def test_report_cli_defaults_into_the_run(tmp_path):
    fake_run(tmp_path / "a", "rome", flagged=None)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "a" / "report").glob("*.png")} == PLOTS


def test_report_of_a_non_run(tmp_path):
    with pytest.raises(RunStateError, match="not a run directory"):
        write_report([tmp_path])


def test_trailing_mean():
    x = np.array([1.0, 0.0, np.nan, 1.0, 1.0])
    assert trailing_mean(x, 2).tolist() == [1.0, 0.5, 0.0, 1.0, 1.0]
    assert trailing_mean(x, 50)[-1] == pytest.approx(0.75)


def test_the_report_fits_a_browser_page(tmp_path):
    """Opened in a real browser 1,400 px wide, the summary table (the headline) stays within the page."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    for name, method in (("a", "rome"), ("b", "memit"), ("c", "encore-with-a-long-name")):
        fake_run(tmp_path / name, method)
    page = write_report([tmp_path / n for n in ("a", "b", "c")], tmp_path / "rep")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", "<script>document.title = [document.querySelector("
                     "'table.summary').getBoundingClientRect().right, document.documentElement.clientWidth]"
                     ".join(' ');</script></body>"))
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--dump-dom",
                          probe.as_uri()], check=False, capture_output=True, text=True, timeout=120)
    title = out.stdout.split("<title>")[1].split("</title>")[0]
    right, width = map(float, title.split())
    assert right <= width, f"the summary table runs {right - width:.0f} px off the page"


def test_a_run_stored_as_running_that_no_process_holds_is_interrupted(tmp_path):
    from editscale.experiment.rundir import RunLock
    from editscale.report.html import run_status

    fake_run(tmp_path / "a", "rome")
    assert run_status(tmp_path / "a", "complete") == "complete"
    assert run_status(tmp_path / "a", "running") == "interrupted"  # killed, or its store copied elsewhere
    with RunLock(tmp_path / "a"):
        assert run_status(tmp_path / "a", "running") == "running"


def test_bounds_are_bracketed_by_the_measurements():
    from editscale.report.limits import Bounds, limit_row
    from editscale.report.plots import RunData

    eff = np.ones(300)
    eff[200:260] = 0.9  # the trailing 100 reach 0.95 at edit 250 (50 of them at 0.9) and drop below at 251
    run = RunData(label="r", edit_idx=np.arange(1, 301, dtype=float), scores={"efficacy": eff},
                  recheck_edits=np.arange(10, 301, 10, dtype=float),
                  forgotten=np.where(np.arange(10, 301, 10) < 120, 0.04, 0.05), forgotten_prob=np.zeros(30),
                  downstream={"perplexity": (np.array([0.0, 50, 100, 150]), np.array([30.0, 31.5, 31.6, 40.0])),
                              "known-facts": (np.array([0.0, 50, 100]), np.array([1.0, 0.99, 0.98]))},
                  distances={})
    row = limit_row(run)
    eff_h, forg_h, ppl_h, known_h = Bounds().headers()
    assert (eff_h, forg_h, ppl_h, known_h) == ("efficacy >= 95% (last 100)", "forgotten < 5%", "perplexity <= +5%",
                                               "known facts >= -2 points")
    assert row[eff_h] == "crossed at 251 (held at 250)"
    assert row[forg_h] == "crossed at 120 (held at 110)"
    assert row[ppl_h] == "crossed at 100 (held at 50)"  # 31.5 is +5.0%, 31.6 beyond
    assert row[known_h] == "held to 100"
    short = RunData(label="s", edit_idx=np.arange(1, 51, dtype=float), scores={"efficacy": np.ones(50)},
                    recheck_edits=np.array([10.0]), forgotten=np.array([0.2]), forgotten_prob=np.zeros(1),
                    downstream={"sst2": (np.array([0.0, 50]), np.array([0.9, 0.9]))}, distances={})
    row = limit_row(short)
    assert row[eff_h] == "- (fewer than 100 edits)" and row[forg_h] == "crossed at 10"
    assert row[ppl_h] == "-" and row[known_h] == "-"  # no panel measured before and after


def test_the_report_and_its_markdown_show_the_bounds(tmp_path):
    from editscale.report.html import summary_markdown

    fake_run(tmp_path / "a", "rome", n=120)
    html = write_report([tmp_path / "a"]).read_text()
    assert "<h2>Bounds</h2>" in html and "<th>forgotten &lt; 5%</th>" in html
    text = summary_markdown([tmp_path / "a"])
    summary, lead, bounds = text.split("\n\n")
    assert summary.startswith("| run |") and lead.startswith("Where each run first left the bounds")
    assert bounds.splitlines()[0] == ("| run | efficacy >= 95% (last 100) | forgotten < 5% | perplexity <= +5% | "
                                      "known facts >= -2 points |")
    assert bounds.splitlines()[2].startswith("| rome | ")
