"""The batch-size curve (``editscale scaling``, ``experiment.scaling``) and the target-vector cache behind it."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from edit_helpers import requests, small
from tiny import bpe_tokenizer, random_model

from editscale.data.readers import read_records
from editscale.errors import ConfigError
from editscale.experiment.scaling import (
    UNEDITED,
    ScalingResult,
    estimate,
    scaling_curve,
    scaling_sample,
    write_json,
)
from editscale.json_values import json_ready
from editscale.methods import targets
from editscale.methods.target_cache import TargetCache
from editscale.model.loading import load_model

SIZES = [1, 2, 4]
LINES = ("memit", "rome")
# small hyperparameters (statistics from 600 keys in memory, few target steps): about a second per curve
SETS = ["v_steps=6", "context_lengths=[[3, 2], [4, 2]]", "mom2_n_tokens=600", "mom2_n_texts=null"]


def _hparams() -> dict:
    return {m: small(m, mom2_n_texts=None) for m in LINES}


@pytest.fixture(scope="module")
def tiny(tiny_testbed):
    model, tok, _ = load_model(tiny_testbed)
    return model, tok, read_records(tiny_testbed / "world.jsonl")


def _curve(tiny, **kw) -> ScalingResult:
    model, tok, cases = tiny
    return scaling_curve(model, tok, cases, SIZES, list(LINES), hparams=_hparams(), stats_cache=None,
                         progress=False, **kw)


def test_estimate_is_the_mean_with_1_96_standard_errors():
    e = estimate([1.0, 0.0, 1.0, 0.0, float("nan")])
    half = 1.96 * math.sqrt((4 * 0.25 / 3) / 4)
    assert e.n == 4 and e.mean == 0.5 and e.high - e.mean == pytest.approx(half) and e.mean - e.low == pytest.approx(half)
    assert math.isnan(estimate([1.0]).low) and estimate([]).n == 0


def test_the_cli_draws_the_curve_writes_every_point_and_breaks_down_relations(tiny_testbed, cli, tmp_path):
    out = tmp_path / "curve"
    args = ["scaling", "-m", str(tiny_testbed), "-d", str(tiny_testbed / "world.jsonl"), "--sizes", "4,1,2",
            "--methods", ",".join(LINES), "--out", str(out), *[a for s in SETS for a in ("--set", s)]]
    code, stdout, err = cli(*args, "--json")
    assert code == 0, err
    # each point on stderr as soon as it is measured (a log keeps the points of a curve stopped before its end)
    assert [line.split(":")[1].strip() for line in err.splitlines() if line.startswith("scaling: ") and " n=" in line] \
        == [f"{m} n={n}" for m in LINES for n in SIZES]
    printed = json.loads(stdout)
    saved = json.loads((out / "scaling.json").read_text())
    assert (out / "scaling.png").stat().st_size > 10_000
    assert saved["sizes"] == SIZES and saved["methods"] == list(LINES) and printed["points"] == saved["points"]
    got = {(p["method"], p["n"]) for p in saved["points"]}
    assert got == {(line, n) for line in (UNEDITED, *LINES) for n in SIZES}
    for p in saved["points"]:
        assert {"efficacy", "paraphrase", "neighborhood", "efficacy_correct", "score"} <= set(p)
        e = p["efficacy"]
        assert e["n"] == p["n"] and (e["low"] is None) == (p["n"] == 1)
        assert e["low"] is None or e["low"] <= e["mean"] <= e["high"]
    # the relation table at the largest n holds the relations of the sample's first 4 records, counted
    sample = scaling_sample(read_records(tiny_testbed / "world.jsonl"), SIZES, 0)[:4]
    wanted = Counter(c.request.relation_id for c in sample)
    for line in (UNEDITED, *LINES):
        assert {r["relation"]: r["count"] for r in saved["relations"][line]} == wanted
    assert saved["case_ids"] == [c.case_id for c in sample]
    assert saved["target_cache"]["optimised"] == 2 * 4  # each record once per method
    assert json_ready(ScalingResult.from_dict(saved).to_dict())["points"] == saved["points"]
    # a table, and Markdown, into the same folder (the command's own)
    code, stdout, err = cli(*args, "--markdown")
    assert code == 0, err
    assert "| line | n |" in stdout and all(f"| {rel} |" in stdout for rel in wanted)
    code, stdout, err = cli(*args)
    assert code == 0 and "by relation at n = 4" in stdout and "wrote" in stdout


def test_the_target_cache_optimises_each_record_once_and_changes_nothing(tiny, monkeypatch):
    model, _, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[str, str]] = []
    real = targets._optimize_chunk

    def counting(ctx, items, module, hp, prefixes):
        seen.extend((module, i.request.subject) for i in items)
        return real(ctx, items, module, hp, prefixes)

    monkeypatch.setattr(targets, "_optimize_chunk", counting)
    cached = _curve(tiny)
    once = Counter(seen)
    assert len(once) == 2 * max(SIZES) and set(once.values()) == {1}  # every record once per method's module
    assert cached.target_cache == {"enabled": True, "optimised": 8, "served": 2 * (1 + 2), "entries": 8}
    seen.clear()
    plain = _curve(tiny, cache_targets=False)
    assert len(seen) == 2 * sum(SIZES)  # without the cache: every record again for every n
    assert [(p.method, p.n) for p in plain.points] == [(p.method, p.n) for p in cached.points]
    for a, b in zip(cached.points, plain.points):
        for m, e in a.metrics.items():
            assert e.mean == pytest.approx(b.metrics[m].mean, abs=1e-9, nan_ok=True), (a.method, a.n, m)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # left unedited


def test_the_cache_serves_a_target_only_on_the_weights_it_was_optimised_on():
    from editscale.methods.base import Delta, Update
    from editscale.methods.context import EditContext
    from editscale.methods.hparams import MemitHparams
    from editscale.methods.prefixes import PrefixSpec
    from editscale.methods.target_cache import TargetCache

    tok = bpe_tokenizer()
    model = random_model("gpt2", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    ctx.target_cache = TargetCache()
    hp = MemitHparams.validated({**small("memit"), "layers": [1]})
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    module = ctx.anatomy.layer_name(1)
    first = targets.optimize_targets(ctx, requests()[:2], module, hp, prefixes)
    again = targets.optimize_targets(ctx, requests(), module, hp, prefixes)  # two served, one optimised
    assert ctx.target_cache.stats() == {"optimised": 3, "served": 2, "entries": 3}
    assert torch.equal(again.target[:2], first.target)
    # on other weights (an edit applied) nothing is served; reverted, it is again
    name = ctx.anatomy.weight_name(0)
    w = ctx.anatomy.weight_param(model, 0)
    delta = Delta({name: Update(name, ctx.anatomy.transposed, dense=torch.full_like(w, 1e-2)
                                if not ctx.anatomy.transposed else torch.full_like(w.T, 1e-2))}).apply(model)
    targets.optimize_targets(ctx, requests()[:1], module, hp, prefixes)
    assert ctx.target_cache.stats()["optimised"] == 4
    delta.revert(model)
    targets.optimize_targets(ctx, requests()[:1], module, hp, prefixes)
    assert ctx.target_cache.stats() == {"optimised": 4, "served": 3, "entries": 4}
    # other target hyperparameters are other entries; the chunk size is not
    targets.optimize_targets(ctx, requests()[:1], module, hp.updated(target_batch=7), prefixes)
    targets.optimize_targets(ctx, requests()[:1], module, hp.updated(v_steps=3), prefixes)
    assert ctx.target_cache.stats() == {"optimised": 5, "served": 4, "entries": 5}


def test_write_json_writes_nan_as_null(tmp_path):
    from editscale.experiment.scaling import ScalingPoint

    result = ScalingResult([1], ["m"], 0, ["0"], [ScalingPoint("m", 1, {"efficacy": estimate([1.0])})], {})
    saved = json.loads(write_json(result, tmp_path / "s.json").read_text())
    assert saved["points"][0]["efficacy"] == {"mean": 1.0, "low": None, "high": None, "n": 1}


RECORD = ('{{"request": {{"prompt": "{{}} lives in", "subject": "S{i}", "target_new": "Paris", '
          '"target_true": "Rome", "case_id": "{i}", "relation_id": "r"}}}}')


@pytest.mark.parametrize(("sizes", "says"), [("0", "'0' is not a positive"), ("a", "'a' is not a positive"),
                                             ("", "no size given"), (" , ", "no size given"),
                                             ("1,-2", "'-2' is not"), ("2,\u00b2", "'\u00b2' is not"),
                                             ("1,5", "only 3 records")])
def test_bad_sizes_are_one_line_errors_before_any_work(sizes, says, cli, tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_text("\n".join(RECORD.format(i=i) for i in range(3)) + "\n")
    out = tmp_path / "out"
    code, stdout, err = cli("scaling", "-m", str(tmp_path / "no-model"), "-d", str(data), "--sizes", sizes,
                            "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.startswith("error: --sizes") and says in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bad_methods_and_overrides_are_one_line_errors(cli, tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_text("\n".join(RECORD.format(i=i) for i in range(3)) + "\n")
    base = ["scaling", "-m", str(tmp_path / "no-model"), "-d", str(data), "--sizes", "1", "--out", str(tmp_path / "o")]
    for extra, says in ((["--methods", "memit,nope"], "unknown method 'nope'"), (["--methods", ","], "no method"),
                        (["--set", "no_such=1"], "--set no_such")):
        code, _, err = cli(*base, *extra)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_unique_fact_allows_other_facts_of_one_subject_in_the_sample(cli, tmp_path):
    """Two relations of each of three subjects: six facts with --unique fact, three subjects without."""
    data = tmp_path / "six.jsonl"
    data.write_text("\n".join(RECORD.format(i=i).replace('"r"}', f'"r{j}"}}').replace(
        f'"case_id": "{i}"', f'"case_id": "{i}-{j}"') for i in range(3) for j in range(2)) + "\n")
    cases = read_records(data)
    sample = scaling_sample(cases, [1, 6], 0, unique="fact")
    assert len({(c.request.subject, c.request.relation_id) for c in sample}) == 6
    assert scaling_sample(cases, [1, 6], 0, unique="fact")[:3] == scaling_sample(cases, [3], 0, unique="fact")
    with pytest.raises(ConfigError, match="only 3 records with distinct subjects; .* --unique fact"):
        scaling_sample(cases, [6], 0)
    code, _, err = cli("scaling", "-m", str(tmp_path / "no-model"), "-d", str(data), "--sizes", "1",
                       "--unique", "relation", "--out", str(tmp_path / "o"))
    assert code == 2 and "--unique: 'relation' is neither" in err and len(err.strip().splitlines()) == 1, err


def test_a_targets_file_keeps_the_vectors_of_a_stopped_curve(tiny, monkeypatch, tmp_path):
    """A curve stopped after some target optimisations, run again on the same file, optimises only the rest
    and gives the curve of an uninterrupted run."""
    reference = _curve(tiny)
    path = tmp_path / "targets.sqlite"
    real, calls = targets._optimize_chunk, []

    def stop_after_three(ctx, items, module, hp, prefixes):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(len(items))
        return real(ctx, items, module, hp, prefixes)

    monkeypatch.setattr(targets, "_optimize_chunk", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        _curve(tiny, targets_file=path)
    monkeypatch.undo()
    kept = TargetCache(path)
    assert len(kept) == sum(calls) > 0  # every chunk optimised before the stop is in the file
    kept.close()
    resumed = _curve(tiny, targets_file=path)
    assert resumed.target_cache["optimised"] == reference.target_cache["optimised"] - sum(calls)
    def scores(result):  # the points without their timings, NaN as None
        return json_ready([p.to_dict() | {"edit_seconds": 0, "eval_seconds": 0} for p in result.points])

    assert scores(resumed) == scores(reference)
    again = _curve(tiny, targets_file=path)  # complete: nothing left to optimise
    assert again.target_cache["optimised"] == 0


def test_a_file_that_is_not_a_targets_file_is_one_line(cli, tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_text("\n".join(RECORD.format(i=i) for i in range(3)) + "\n")
    bad = tmp_path / "targets.sqlite"
    bad.write_text("not a database " * 100)
    base = ["scaling", "-m", str(tmp_path / "no-model"), "-d", str(data), "--sizes", "1", "--out", str(tmp_path / "o")]
    code, _, err = cli(*base, "--targets", str(bad))
    assert code == 2 and "is not an editscale targets file" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli(*base, "--targets", str(tmp_path / "t.sqlite"), "--no-target-cache")
    assert code == 2 and "drop --no-target-cache" in err, err
    assert bad.read_text().startswith("not a database")  # left as it was
