"""Run configs: the smallest config works as written; bad ones fail in one line naming the field."""

import pytest

from editscale.data.records import EditCase, EditRequest
from editscale.errors import ConfigError
from editscale.experiment.config import load_config, parse_config, sample_cases
from editscale.experiment.runner import Schedule

SMALLEST = """\
model: testbed:demo
method: rome            # a name, or {name: memit, hparams: {...}}
data: testbed:demo      # or a records file
edits: 1000
batch: 1
forget_every: 10
downstream_every: 50
seed: 0
"""


def test_smallest_config_as_written(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(SMALLEST)
    cfg = load_config(path)
    assert (cfg.model, cfg.method.name, cfg.method.hparams, cfg.edits, cfg.batch) == (
        "testbed:demo", "rome", {}, 1000, 1)
    assert (cfg.forget_every, cfg.downstream_every, cfg.seed, Schedule.of(cfg).n_updates) == (10, 50, 0, 1000)
    assert cfg.tasks == "skills"
    assert parse_config(cfg.to_dict()) == cfg


def test_method_as_mapping():
    cfg = parse_config({"model": "m", "method": {"name": "memit", "hparams": {"layers": [0, 1]}}, "data": "d",
                        "edits": 10, "batch": 4})
    assert cfg.method.name == "memit" and cfg.method.hparams == {"layers": [0, 1]}
    assert Schedule.of(cfg).n_updates == 3
    assert cfg.tasks == "perplexity,known-facts,sst2"  # a real model: the panel


@pytest.mark.parametrize("change, field", [
    ({"edits": 0}, "'edits'"),
    ({"forget_every": "often"}, "'forget_every'"),
    ({"batch": -1}, "'batch'"),
    ({"guard": {"norm_factor": 0.5}}, "'guard.norm_factor'"),
    ({"method": {"hparams": {}}}, "'method.name'"),
    ({"forget_evry": 10}, "'forget_evry'"),
    ({"model": " "}, "'model'"),
])
def test_bad_config_one_line_naming_field(change, field):
    data = {"model": "testbed:demo", "method": "rome", "data": "testbed:demo", "edits": 10, **change}
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    msg = str(e.value)
    assert "\n" not in msg and field in msg


def test_missing_field_and_bad_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: testbed:demo\nmethod: rome\nedits: 5\n")
    with pytest.raises(ConfigError, match="field 'data' is missing"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def _case(i: int, subject: str, relation: str = "P1") -> EditCase:
    return EditCase(EditRequest("{} lives in", subject, f"new{i}", f"old{i}", case_id=str(i), relation_id=relation))


def test_seeded_sample_never_edits_a_subject_twice():
    cases = [_case(i, f"S{i % 7}") for i in range(40)]
    a = sample_cases(cases, 7, seed=3)
    assert len({c.request.subject for c in a}) == 7
    assert [c.case_id for c in a] == [c.case_id for c in sample_cases(cases, 7, seed=3)]
    assert [c.case_id for c in a] != [c.case_id for c in sample_cases(cases, 7, seed=4)]
    with pytest.raises(ConfigError, match="field 'edits'.*only 7 distinct subjects.*unique: fact"):
        sample_cases(cases, 8, seed=0)


def test_unique_facts_allow_other_relations_of_a_subject():
    cases = [_case(i, f"S{i % 3}", f"P{i % 2}") for i in range(12)]
    picked = sample_cases(cases, 6, seed=0, unique="fact")
    keys = [(c.request.subject, c.request.relation_id) for c in picked]
    assert len(set(keys)) == 6 and len({s for s, _ in keys}) == 3


def test_schedule():
    s = Schedule(n_edits=23, batch=1, forget_every=5, downstream_every=10)
    assert s.n_updates == 23
    assert [u for u in range(24) if s.recheck(u)] == [5, 10, 15, 20, 23]
    assert [u for u in range(24) if s.downstream(u)] == [0, 10, 20, 23]
    assert list(s.edits_in(7)) == [7]
    b = Schedule(n_edits=10, batch=4, forget_every=2, downstream_every=0)
    assert b.n_updates == 3
    assert [list(b.edits_in(u)) for u in (1, 2, 3)] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [u for u in range(4) if b.recheck(u)] == [2, 3]
    assert not any(b.downstream(u) for u in range(4))
    assert b.n_edits_after(3) == 10
