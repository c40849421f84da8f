"""Edit records and their readers: every shape, and one-line errors that name file, record and field."""

import json
from pathlib import Path

import pytest

from editscale.data import EditCase, EditRequest, read_records
from editscale.errors import DataLoadError, RecordError, SubjectNotInPromptError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# the sample record of the ROME paper, appendix D (abridged prompt lists)
COUNTERFACT = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}


def write(tmp_path, data, name="r.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_request_validation():
    r = EditRequest("{} plays the sport of", "LeBron James", " football ", "basketball", case_id=3)
    assert r.text == "LeBron James plays the sport of" and r.target_new == "football" and r.case_id == "3"
    with pytest.raises(RecordError, match="exactly one '\\{\\}'"):
        EditRequest("plays the sport of", "LeBron James", "football")
    with pytest.raises(RecordError, match="'subject' is empty"):
        EditRequest("{} plays", " ", "football")
    with pytest.raises(RecordError, match="both 'football'"):
        EditRequest("{} plays", "X", "football", "football")
    with pytest.raises(SubjectNotInPromptError, match="'Nobody' does not occur"):
        EditRequest.from_text("LeBron James plays", "Nobody", "football")


def test_counterfact_original_shape(tmp_path):
    (case,) = read_records(write(tmp_path, [COUNTERFACT]))
    assert case.request.prompt == "The mother tongue of {} is"
    assert (case.request.target_new, case.request.target_true) == ("English", "French")
    assert case.request.relation_id == "P103" and case.case_id == "0"
    assert len(case.paraphrase_prompts) == 1 and case.neighbor_true == "French"
    assert EditCase.from_dict(json.loads(json.dumps(case.to_dict()))) == case


def test_native_jsonl_and_plain_requests(tmp_path):
    case = read_records(write(tmp_path, [COUNTERFACT]))[0]
    lines = json.dumps(case.to_dict()) + "\n" + json.dumps(case.to_dict()) + "\n"
    assert read_records(write(tmp_path, lines, "w.jsonl")) == [case, case]
    plain = [{"prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": "football"}]
    (c,) = read_records(write(tmp_path, plain))
    assert c.request.target_true is None and c.case_id == "0"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["requested_rewrite"].pop("subject"), "record 0 \\(case_id 0\\): missing field 'subject'"),
        (lambda r: r["requested_rewrite"].update(prompt="no slot"), "exactly one"),
        (lambda r: r.update(paraphrase_prompts="x" and 5), "'paraphrase_prompts' must be a list"),
        (lambda r: r["requested_rewrite"]["target_new"].update(str=""), "'target_new' is empty"),
    ],
)
def test_malformed_counterfact_names_file_record_field(tmp_path, mutate, message):
    good = json.loads(json.dumps(COUNTERFACT))
    bad = json.loads(json.dumps(COUNTERFACT))
    mutate(bad)
    path = write(tmp_path, [good, bad] if "record 0" not in message else [bad, good])
    with pytest.raises(RecordError, match=message) as err:
        read_records(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_easyedit_subject_missing_and_bad_json(tmp_path):
    rec = {"case_id": 7, "prompt": "Toko Yasuda, the", "subject": "Yoko", "target_new": "piano",
           "ground_truth": "guitar", "rephrase_prompt": "x", "locality_prompt": "y", "locality_ground_truth": "z"}
    with pytest.raises(SubjectNotInPromptError, match="case_id 7.*'Yoko' does not occur"):
        read_records(write(tmp_path, [rec]))
    with pytest.raises(RecordError, match="line 2: invalid JSON"):
        read_records(write(tmp_path, '{"prompt": "{}", "subject": "a", "target_new": "b"}\n{oops\n', "x.jsonl"))
    with pytest.raises(RecordError, match="unrecognised record shape"):
        read_records(write(tmp_path, [{"foo": 1}]))
    with pytest.raises(DataLoadError, match="does not exist"):
        read_records(tmp_path / "missing.json")


@pytest.mark.skipif(not (SHARED / "counterfact").exists(), reason="shared/data/counterfact not present")
def test_real_easyedit_counterfact():
    cases = read_records(SHARED / "counterfact" / "counterfact-val.json")
    assert len(cases) == 1919
    c = cases[0]
    assert c.request.text.startswith(c.request.subject) or c.request.subject in c.request.text
    assert c.paraphrase_prompts and c.neighborhood_prompts and c.neighbor_true


@pytest.mark.skipif(not (SHARED / "zsre").exists(), reason="shared/data/zsre not present")
def test_real_zsre_strict_and_skip_invalid(capsys):
    path = SHARED / "zsre" / "zsre_mend_train-1k.json"
    with pytest.raises(RecordError, match="record 534: field 'target_new' is empty"):
        read_records(path)
    cases = read_records(path, skip_invalid=True)
    assert len(cases) == 998 and "skipped 2 invalid" in capsys.readouterr().err
    assert cases[0].request.prompt == "What is the product made by {}?"
    assert cases[0].neighbor_true == "Walter Sobchak"
