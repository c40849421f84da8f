"""The eval command end to end, and its one-line errors."""

import json
import subprocess
import sys

import pytest
from tiny import bpe_tokenizer, random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    tok = bpe_tokenizer()
    random_model("gpt2", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def run(*args):
    return subprocess.run([sys.executable, "-m", "editscale.cli", *args], capture_output=True, text=True, check=False)


def test_eval_json(model_dir, tmp_path):
    recs = tmp_path / "r.jsonl"
    recs.write_text(json.dumps({"prompt": "{} plays the sport of", "subject": "LeBron James",
                                "target_new": "football", "target_true": "basketball",
                                "paraphrase_prompts": ["LeBron James is a player of"],
                                "neighborhood_prompts": ["The quick brown fox plays the sport of"]}) + "\n")
    r = run("eval", "--model", str(model_dir), "--data", str(recs), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 1 and out["efficacy"] in (0.0, 1.0) and 0 <= out["score"] <= 1
    assert set(out) >= {"efficacy", "paraphrase", "neighborhood", "score", "efficacy_correct", "gen_efficacy",
                        "gen_paraphrase", "gen_entropy", "reference_score"}
    assert out["gen_entropy"] > 0 and out["reference_score"] is None  # no reference text in this record
    no_paraphrase = json.loads(recs.read_text())
    del no_paraphrase["paraphrase_prompts"]
    recs.write_text(json.dumps(no_paraphrase) + "\n")
    out = json.loads(run("eval", "--model", str(model_dir), "--data", str(recs), "--json").stdout)
    assert out["paraphrase"] is None and out["score"] is None  # the Score needs all three
    # --metrics scores only those (no sampled generations); with --method too, before and after each edit
    out = json.loads(run("eval", "--model", str(model_dir), "--data", str(recs), "--json",
                         "--metrics", "efficacy,neighborhood").stdout)
    assert out["efficacy"] in (0.0, 1.0) and "gen_entropy" not in out and "paraphrase_magnitude" not in out
    r = run("eval", "--model", str(model_dir), "--data", str(recs), "--json", "--metrics", "efficacy",
            "--method", "ft-l", "--set", "layer=0")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["pre"]) == set(out["post"]) and "gen_entropy" not in out["post"], out
    assert out["hparams"]["layers"] == [0] and out["batch"] == 1  # the result says what produced it


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/dir", "--data", "{data}"], "error: model directory '/no/such/dir' does not exist"),
        (["--model", "{model}", "--data", "/no/such.json"], "error: records file /no/such.json does not exist"),
        (["--model", "{model}", "--data", "{bad}"], "error: .*bad.json: record 0: missing field 'subject'"),
        (["--model", "{model}", "--data", "{data}", "--metrics", "efficacy,bogus"],
         "error: --metrics: unknown per-edit metric 'bogus'; known: efficacy, "),
    ],
)
def test_eval_errors_are_one_line(model_dir, tmp_path, args, message):
    import re

    data = tmp_path / "ok.json"
    data.write_text(json.dumps([{"prompt": "{} x", "subject": "a", "target_new": "b"}]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "{} x", "target_new": "b", "ground_truth": "c"}]))
    args = [a.format(data=data, model=model_dir, bad=bad) for a in args]
    r = run("eval", *args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and re.match(message, lines[0]), r.stderr
