"""The Python API (``editscale.edit``, ``Editor``, ``evaluate_edits``) and the ``edit`` / ``eval --method`` CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from edit_helpers import cases, corpus, requests, saved_model, small
from tiny import bpe_tokenizer, random_model

import editscale
from editscale.api import Editor, evaluate_edits, to_requests
from editscale.data.records import EditRequest
from editscale.errors import ConfigError, DataLoadError, RecordError
from editscale.methods.base import Delta
from editscale.model.loading import load_model
from editscale.stats import second_moment as sm

warnings.filterwarnings("ignore", message=".*matrix is singular.*")


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("model"), manifest={"rome_layer": 1, "memit_layers": [0, 1]})


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_edit_returns_an_applied_delta(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    delta = editscale.edit(model, tok, requests()[0], method="rome", hparams=small("rome"), stats_cache=None,
                           corpus=corpus(), progress=False)
    assert isinstance(delta, Delta) and delta.applied
    assert not _same(before, model.state_dict())
    delta.revert(model)
    assert _same(before, model.state_dict())


def test_requests_from_dicts():
    rome_shape = {"case_id": 7, "requested_rewrite": {"prompt": "{} plays the sport of", "subject": "LeBron James",
                                                      "target_new": {"str": "football"},
                                                      "target_true": {"str": "basketball"}}}
    filled = {"prompt": "LeBron James plays the sport of", "subject": "LeBron James", "target_new": "football"}
    a, b = to_requests([rome_shape, filled])
    assert a == EditRequest("{} plays the sport of", "LeBron James", "football", "basketball", case_id="7")
    assert b.prompt == "{} plays the sport of" and b.target_true is None
    assert to_requests(filled) == [b]
    with pytest.raises(RecordError, match="target_new"):
        to_requests({"prompt": "{} x", "subject": "s"})
    with pytest.raises(RecordError, match="does not occur"):
        to_requests({"prompt": "nothing here", "subject": "s", "target_new": "t"})
    with pytest.raises(RecordError):
        to_requests([])


def test_editor_keeps_its_caches_and_compute_does_not_apply(tok, monkeypatch):
    model = random_model("gpt2", vocab_size=len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = Editor(model, tok, "memit", small("memit"), stats_cache=None, corpus=corpus(), progress=False).prepare()
    calls = []
    real = sm.compute_second_moments
    monkeypatch.setattr(sm, "compute_second_moments", lambda *a, **k: calls.append(1) or real(*a, **k))
    d1 = ed.compute(requests()[:2])
    assert not d1.applied and _same(before, model.state_dict())
    d2 = ed.edit(requests()[2:])
    assert d2.applied and not _same(before, model.state_dict())
    d3 = ed.compute(cases()[:1])  # cases work too (their other facts enter the KL term)
    assert d3.info["case_ids"] == ["0"]
    assert calls == []  # statistics were computed once, by prepare()
    d2.revert(model)
    assert _same(before, model.state_dict())


def test_editor_with_bad_method_or_hparams(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    with pytest.raises(ConfigError, match="unknown method"):
        Editor(model, tok, "nope", stats_cache=None)
    with pytest.raises(ConfigError, match="'v_steps'"):
        Editor(model, tok, "rome", {"v_steps": 0}, stats_cache=None)


def test_statistics_come_from_the_model_directory_and_disk_cache(model_dir, tmp_path):
    model, tok, _ = load_model(str(model_dir))
    ed = Editor(model, tok, "rome", small("rome"), stats_cache=tmp_path / "stats", progress=False)
    assert ed.hparams.layers == [1]  # from the manifest
    ed.prepare()
    assert len(list((tmp_path / "stats").glob("*.safetensors"))) == 1


def test_evaluate_edits_is_the_single_edit_protocol(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = Editor(model, tok, "memit", small("memit"), stats_cache=None, corpus=corpus(), progress=False)
    out = evaluate_edits(ed, cases(), batch=2, progress=False)
    assert out["method"] == "memit" and out["n"] == 3 and len(out["cases"]) == 3
    assert set(out["pre"]) >= {"efficacy", "paraphrase", "neighborhood", "score"}
    assert set(out["post"]) == set(out["pre"])
    assert _same(before, model.state_dict())


def test_evaluate_edits_saves_scores_and_continues_where_it_stopped(tok, tmp_path):
    """A stopped single-edit evaluation with ``save`` continues after its last saved edit, and ends as the
    evaluation that never stopped; a line cut short is dropped, another evaluation's file is refused."""
    model = random_model("gpt2", vocab_size=len(tok))
    ed = Editor(model, tok, "memit", small("memit"), stats_cache=None, corpus=corpus(), progress=False)
    whole = evaluate_edits(ed, cases(), batch=1, progress=False)
    edit, made = ed.edit, []

    def stopping(chunk):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(chunk[0].request.case_id)
        return edit(chunk)

    ed.edit = stopping
    path = tmp_path / "scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_edits(ed, cases(), batch=1, progress=False, save=path)
    with open(path, "ab") as f:
        f.write(b'{"edit": 2, "po')  # a line cut short by a kill or a full disk
    made.clear()
    again = evaluate_edits(ed, cases(), batch=1, progress=False, save=path)
    assert made == [cases()[2].request.case_id]  # only the edit the file lacked
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN
    assert same(again, whole) and list(again["post"]) == list(whole["post"])  # the table's rows in order
    made.clear()
    assert same(evaluate_edits(ed, cases(), batch=1, progress=False, save=path), whole) and made == []
    assert len(path.read_text().splitlines()) == 1 + 1 + 3
    with pytest.raises(ConfigError, match=r"scores of another evaluation \(it differs in batch\)"):
        evaluate_edits(ed, cases(), batch=2, progress=False, save=path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "[1, 2]", *lines[2:]]) + "\n")
    with pytest.raises(DataLoadError, match="is damaged: line 2 is neither"):
        evaluate_edits(ed, cases(), batch=1, progress=False, save=path)


# --- CLI ------------------------------------------------------------------------------------------------------
def _cli(cli, *args) -> dict:
    code, out, err = cli(*args)
    assert code == 0, err
    return json.loads(out)


def test_cli_edit_one_fact_json_and_save(model_dir, tmp_path, cli):
    out = _cli(cli, "edit", "--model", str(model_dir), "--method", "rome", "--prompt", "{} plays the sport of",
               "--subject", "LeBron James", "--target", "football", "--target-true", "basketball",
               "--paraphrase", "What sport? LeBron James plays the sport of", "--set", "v_steps=4",
               "--set", "context_lengths=[[3, 2]]", "--stats-dir", str(tmp_path / "stats"),
               "--save", str(tmp_path / "edited"), "--json")
    (e,) = out["edits"]
    assert [r["kind"] for r in e["before"]] == ["prompt", "paraphrase"]
    assert all(0 <= r["p_new"] <= 1 and 0 <= r["p_true"] <= 1 for r in e["before"] + e["after"])
    assert e["after"][0]["p_new"] != e["before"][0]["p_new"]
    saved = tmp_path / "edited"
    assert (saved / "config.json").is_file() and (saved / "deltas" / "00000.safetensors").is_file()
    assert (saved / "corpus.txt").is_file() and json.loads((saved / "edit.json").read_text())["method"] == "rome"
    # the saved model is the edited one
    edited, _, anatomy = load_model(str(saved))
    original, _, _ = load_model(str(model_dir))
    name = anatomy.weight_name(1)
    from safetensors.torch import load_file

    delta = Delta.from_tensors(load_file(str(saved / "deltas" / "00000.safetensors")))
    delta.apply(original)
    torch.testing.assert_close(original.state_dict()[name], edited.state_dict()[name])


def test_cli_edit_records_in_batches(model_dir, tmp_path, cli):
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cases()))
    out = _cli(cli, "edit", "--model", str(model_dir), "--method", "memit", "--data", str(data), "--batch", "2",
               "--set", "v_steps=3", "--set", "context_lengths=[[3, 2]]", "--stats-dir", str(tmp_path), "--json")
    assert out["n"] == 3 and len(out["edits"]) == 3 and out["update_norms"]


def test_cli_eval_with_method(model_dir, tmp_path, cli):
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cases()))
    out = _cli(cli, "eval", "--model", str(model_dir), "--data", str(data), "--method", "ft-l", "--set",
               "steps=2", "--stats-dir", str(tmp_path), "--json")
    assert set(out) == {"method", "n", "pre", "post", "batch", "hparams"} and out["method"] == "ft-l"
    assert out["n"] == 3 and out["hparams"]["steps"] == 2
    assert {"efficacy", "paraphrase", "neighborhood", "score"} <= set(out["post"])


def test_cli_eval_save_needs_a_method(model_dir, tmp_path, cli):
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cases()))
    code, _, err = cli("eval", "--model", str(model_dir), "--data", str(data), "--save", str(tmp_path / "s.jsonl"))
    assert code == 2 and err.strip() == ("error: --save keeps the scores of edits: give --method (the unedited "
                                         "model's scores take one pass and need no saving)")
    assert not (tmp_path / "s.jsonl").exists()
    (tmp_path / "afile").write_text("")
    for where, message in [(tmp_path / "afile" / "s.jsonl", "is a file, not a directory"),
                           (tmp_path, "is a directory; name a file")]:
        code, _, err = cli("eval", "--model", str(model_dir), "--data", str(data), "--method", "rome",
                           "--save", str(where))
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_edit_errors(model_dir, cli):
    for args, message in [
        (["--prompt", "{} x"], "missing --subject, --target"),
        (["--prompt", "{} x", "--subject", "a", "--target", "b", "--set", "layer"], "KEY=VALUE"),
        (["--prompt", "{} x", "--subject", "a", "--target", "b", "--set", "layer=99"], "layer 99 does not exist"),
    ]:
        code, _, err = cli("edit", "--model", str(model_dir), "--method", "rome", *args)
        assert code == 2
        err = err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
