"""The general-ability panel: perplexity on held-out text, known-fact retention, their data sources, and the
runner recording them and the report drawing them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from edit_helpers import corpus
from test_experiment_runner import config, make_fixture
from tiny import bpe_tokenizer, random_model

from editscale.errors import DataLoadError
from editscale.eval.downstream import parse_task_names, prepare_panel
from editscale.eval.panel import KnownFactsProbe, PerplexityProbe, known_1000_facts, primary_metric
from editscale.experiment.config import parse_config
from editscale.experiment.runner import run_experiment
from editscale.report.html import run_summary_row, write_report
from editscale.report.plots import load_run


def _perturb(model, scale: float = 3.0) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * scale * p.std())


def test_perplexity_probe_is_fixed_by_its_seed_and_sees_damage():
    tok, model = bpe_tokenizer(), random_model("gpt2", vocab_size=400, layers=2)
    text = "\n".join(corpus(400))
    a = PerplexityProbe.from_text(text, tok, n_tokens=256, window=64, seed=3)
    b = PerplexityProbe.from_text(text, tok, n_tokens=256, window=64, seed=3)
    c = PerplexityProbe.from_text(text, tok, n_tokens=256, window=64, seed=4)
    assert a.windows == b.windows and a.windows != c.windows and len(a.windows) == 4
    before = a.evaluate(model)
    assert before["n"] == 4 * 63 and math.isclose(before["perplexity"], math.exp(before["nll"]))
    assert 1 < before["perplexity"] < 10 * 400
    _perturb(model)
    assert a.evaluate(model)["perplexity"] != pytest.approx(before["perplexity"], rel=1e-3)
    # windows never exceed the model's context
    assert max(len(w) for w in PerplexityProbe.from_text(text, tok, n_tokens=256, window=64, context=16).windows) == 16
    with pytest.raises(DataLoadError, match="fewer than"):
        PerplexityProbe.from_text("too short", tok, n_tokens=256, window=64)


def test_panel_on_a_testbed_reads_its_own_world_and_grammar(tiny_testbed):
    from editscale.names import load_model

    model, tok, _ = load_model(str(tiny_testbed))
    panel = prepare_panel("perplexity,known-facts", model, tok, model_dir=tiny_testbed, n=40, seed=0)
    first = panel.evaluate(model)
    assert list(first) == ["perplexity", "known-facts"]
    known = first["known-facts"]
    assert known["retention"] == 1.0 and known["n"] == 40  # chosen as the facts the model gets right
    assert known["margin"] > 0  # every fact right: every margin positive
    assert 1 < first["perplexity"]["perplexity"] < 50  # text of the grammar it was trained on
    _perturb(model, 1.0)
    after = panel.evaluate(model)
    assert after["known-facts"]["retention"] < 0.9 and after["perplexity"]["perplexity"] > first["perplexity"]["perplexity"]
    assert after["known-facts"]["margin"] < known["margin"]


def test_known_facts_from_known_1000_and_errors(tmp_path):
    rows = [{"prompt": "Danielle Darrieux speaks", "attribute": "French", "subject": "Danielle Darrieux"}]
    (tmp_path / "known_1000").mkdir()
    (tmp_path / "known_1000" / "known_1000.json").write_text(json.dumps(rows))
    assert known_1000_facts(tmp_path / "known_1000" / "known_1000.json") == [("Danielle Darrieux speaks", "French")]
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(DataLoadError, match="not ROME's known_1000.json"):
        known_1000_facts(tmp_path / "bad.json")
    tok, model = bpe_tokenizer(), random_model("gpt2", vocab_size=400, layers=2)
    with pytest.raises(DataLoadError, match="gets none of the 1 known facts right"):
        KnownFactsProbe(model, tok, known_1000_facts(tmp_path / "known_1000" / "known_1000.json"))
    # no data: one line that says how to get it
    with pytest.raises(DataLoadError, match=r"no WikiText-2 test text in .*editscale data fetch wikitext-2") as e:
        prepare_panel("perplexity", model, tok, data_dir=tmp_path / "empty", model_dir=None)
    assert "\n" not in str(e.value)
    assert parse_task_names("perplexity,known-facts,sst2") == ["perplexity", "known-facts", "sst2"]
    assert primary_metric("perplexity") == "perplexity" and primary_metric("sst2") == "f1"


def test_real_models_default_to_the_panel_testbeds_to_their_skills(tmp_path):
    base = {"method": "rome", "data": "x.json", "edits": 1}
    assert parse_config({**base, "model": "some/hub-model"}).tasks == "perplexity,known-facts,sst2"
    assert parse_config({**base, "model": "testbed:demo"}).tasks == "skills"


def test_runner_records_the_panel_and_the_report_draws_it(tmp_path):
    model_dir, data = make_fixture(tmp_path)
    data_dir = tmp_path / "data" / "wikitext"
    data_dir.mkdir(parents=True)
    (data_dir / "wikitext-2-raw.test.hfjoined.txt").write_text("\n".join(corpus(3000)))
    cfg = config(model_dir, data, edits=10, downstream_every=5, downstream_tasks="perplexity",
                 downstream_data_dir=str(tmp_path / "data"), hparams={"scale": 2.0})
    run_experiment(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    n, ppl = run.downstream["perplexity"]
    assert list(n) == [0, 5, 10] and ppl[0] > 1 and len(set(ppl)) == 3
    row = run_summary_row(tmp_path / "run", run)
    assert row["perplexity change"] == f"{100 * (ppl[-1] / ppl[0] - 1):+.1f}%" and row["known facts kept"] == "-"
    page = write_report([tmp_path / "run"], tmp_path / "report")
    assert (page.parent / "downstream.png").is_file() and "perplexity" in page.read_text()


def test_cli_downstream_runs_the_probes(tiny_testbed, cli, monkeypatch):
    code, out, err = cli("downstream", "--model", str(tiny_testbed), "--tasks", "known-facts,perplexity", "--n", "20",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["known-facts"]["retention"] == 1.0 and res["known-facts"]["margin"] > 0
    assert res["perplexity"]["perplexity"] > 1
    monkeypatch.setenv("COLUMNS", "200")  # the table on one line a task
    code, out, err = cli("downstream", "--model", str(tiny_testbed), "--tasks", "known-facts", "--n", "20")
    assert code == 0 and "retention 1.000 (margin +" in out, err
    assert Path(tiny_testbed).is_dir()
