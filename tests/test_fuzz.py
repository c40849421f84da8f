"""A fuzzer for the CLI (issue 25): property-based records files, run configs, grid files and command lines built
from the CLI's own declared options. For every input the command either succeeds (exit 0) or says what is wrong
in one clean ``error:`` line (exit 1 or 2); it never prints a traceback, and a command that fails writes nothing
(not in the workspace, not in the cache).

The fast profile runs in the normal suite, derandomized (the same inputs on every run); ``-m fuzz`` runs the long
profile with fresh random inputs (``EDITSCALE_FUZZ_EXAMPLES``, default 300 per target).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=int(os.environ.get("EDITSCALE_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
TRIED = {"n": 0}  # inputs tried in this session (the note reports it)

# --- values ------------------------------------------------------------------------------------------------------
texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "{}", "{} lives in", "Alice", "Paris", "\x00",
                                                         "é" * 5, "{} {}", "x" * 2000]))
scalars = st.one_of(texts, st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none())
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(texts, inner, max_size=3)), max_leaves=8)
RECORD_KEYS = ["prompt", "subject", "target_new", "target_true", "case_id", "paraphrase_prompts",
               "neighborhood_prompts", "requested_rewrite", "rephrase_prompt", "locality_prompt",
               "locality_ground_truth", "ground_truth", "src", "alt", "answers", "loc", "loc_ans", "request"]
GOOD = {"prompt": "{} lives in", "subject": "Alice Smith", "target_new": "Paris", "target_true": "Rome"}


def _record():
    """Mostly-valid records with some fields dropped, replaced or added."""
    return st.builds(
        lambda drop, changes: {**{k: v for k, v in GOOD.items() if k not in drop}, **changes},
        st.sets(st.sampled_from(list(GOOD)), max_size=2),
        st.dictionaries(st.sampled_from(RECORD_KEYS), json_values, max_size=2))


HOSTILE = ["x" * 3000, "word " * 600, "\u202e" * 50, "{}" * 40, "\n" * 200, "é" * 700]


def _hostile_record():
    """A valid record with one field made hostile: very long (past the model's context), control characters."""
    return st.builds(lambda key, value: {**GOOD, key: value if key != "prompt" else "{} " + value},
                     st.sampled_from(list(GOOD)), st.sampled_from(HOSTILE))


records_files = st.tuples(st.sampled_from([".json", ".jsonl"]), st.lists(
    st.one_of(_record(), _hostile_record(), json_values), min_size=0, max_size=3))

CONFIG_FIELDS = {
    "edits": st.one_of(st.integers(-1, 2), st.sampled_from(["2", True, None, 1.5])),
    "batch": st.one_of(st.integers(0, 2), st.sampled_from(["x", None])),
    "forget_every": st.one_of(st.integers(0, 2), st.none()),
    "downstream_every": st.integers(-1, 1),
    "seed": st.one_of(st.integers(-2, 2), texts),
    "unique": st.sampled_from(["subject", "fact", "nope", 3]),
    "threads": st.one_of(st.integers(0, 1), texts),
    "metrics": st.one_of(st.just(["efficacy"]), st.lists(st.sampled_from(["efficacy", "nope", "paraphrase"]),
                                                         max_size=2), texts),
    "device": st.sampled_from(["cpu", "meta", "bogus", "cuda:7", None]),
    "dtype": st.sampled_from(["float32", "float8", None, 3]),
    "guard": st.one_of(st.just({"enabled": False}), st.dictionaries(st.sampled_from(
        ["enabled", "revert", "norm_factor", "entropy_ratio", "bogus"]), scalars, max_size=2)),
    "bogus_field": scalars,
}
METHOD_HPARAMS = st.dictionaries(st.sampled_from(["steps", "lr", "layers", "layer", "v_lr", "nope", "norm_constraint"]),
                                 scalars, max_size=2)


def _config(records: str, tiny: str):
    base = {"model": tiny, "data": records, "edits": 2, "forget_every": 1, "threads": 1, "metrics": ["efficacy"],
            "method": {"name": "ft-l", "hparams": {"steps": 1}}, "guard": {"enabled": False}}
    return st.builds(
        lambda changes, drop, method, hparams: {
            **{k: v for k, v in base.items() if k not in drop}, **changes,
            **({"method": {"name": method, "hparams": {"steps": 1, **hparams}}} if method else {})},
        st.fixed_dictionaries({}, optional=CONFIG_FIELDS),
        st.sets(st.sampled_from(["model", "data", "edits", "method"]), max_size=1),
        st.sampled_from([None, "ft-l", "nope", ""]),
        METHOD_HPARAMS)


# --- the harness --------------------------------------------------------------------------------------------------
def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root in roots:
        if root.exists():
            for p in [root, *root.rglob("*")]:
                try:
                    st_ = p.stat()
                except FileNotFoundError:
                    continue
                out[str(p)] = (st_.st_size if p.is_file() else -1, st_.st_mtime_ns if p.is_file() else 0)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_testbed):
    ws = tmp_path_factory.mktemp("fuzz")
    (ws / "good.jsonl").write_text("".join(json.dumps(dict(GOOD, subject=f"P{i}")) + "\n" for i in range(3)))
    (ws / "dir").mkdir()
    return {"ws": ws, "tiny": str(tiny_testbed)}


def _check(cli, args: list[str], watched: list[Path], monkeypatch) -> tuple[int, str, str]:
    from editscale import cache

    monkeypatch.setenv("EDITSCALE_PROGRESS", "0")
    roots = [*watched, cache.cache_root()]
    before = _snapshot(*roots)
    code, out, err = cli(*args)
    TRIED["n"] += 1
    assert "Traceback" not in err, f"{args}: {err}"
    assert code in (0, 1, 2), f"{args}: exit {code}: {err}"
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{args}: not one clean line: {err!r}"
        changed = sorted(set(before.items()) ^ set(_snapshot(*roots).items()))
        assert not changed, f"{args}: failed and wrote {changed[:3]}"
    return code, out, err


def _write_records(path: Path, suffix: str, items: list) -> Path:
    target = path.with_suffix(suffix)
    text = "".join(json.dumps(x) + "\n" for x in items) if suffix == ".jsonl" else json.dumps(items)
    target.write_text(text)
    return target


def _records_property(world, cli, monkeypatch, tmp_path_factory):
    @given(records_files)
    def prop(spec):
        suffix, items = spec
        folder = tmp_path_factory.mktemp("rec")
        path = _write_records(folder / "records", suffix, items)
        _check(cli, ["eval", "-m", world["tiny"], "-d", str(path), "--metrics", "efficacy"], [folder, world["ws"]],
               monkeypatch)

    return prop


def _config_property(world, cli, monkeypatch, tmp_path_factory):
    @given(st.data())
    def prop(data):
        cfg = data.draw(_config(str(world["ws"] / "good.jsonl"), world["tiny"]))
        folder = tmp_path_factory.mktemp("cfg")
        (folder / "run.yaml").write_text(yaml.safe_dump(cfg))
        _check(cli, ["run", str(folder / "run.yaml"), "--out", str(folder / "out"), "--json"], [folder, world["ws"]],
               monkeypatch)

    return prop


def _grid_property(world, cli, monkeypatch, tmp_path_factory):
    grids = st.one_of(
        st.dictionaries(st.sampled_from(["method", "seed", "method.hparams.steps", "edits", "bogus", "guard.revert"]),
                        st.one_of(st.lists(scalars, max_size=2), scalars), max_size=2),
        st.lists(st.dictionaries(st.sampled_from(["method", "seed"]), st.lists(
            st.sampled_from(["ft-l", "nope", 0, 1]), max_size=2), max_size=1), max_size=2), scalars)

    @given(grids)
    def prop(grid):
        base = {"model": world["tiny"], "data": str(world["ws"] / "good.jsonl"), "edits": 1, "forget_every": 1,
                "threads": 1, "metrics": ["efficacy"], "guard": {"enabled": False},
                "method": {"name": "ft-l", "hparams": {"steps": 1}}}
        if isinstance(grid, dict) and "method" in grid:
            base.pop("method")
        folder = tmp_path_factory.mktemp("grid")
        (folder / "grid.yaml").write_text(yaml.safe_dump({**base, "grid": grid}))
        _check(cli, ["sweep", str(folder / "grid.yaml"), "--out", str(folder / "out"), "--local"],
               [folder, world["ws"]], monkeypatch)

    return prop


# commands a fuzzed command line may name, with the arguments that make them reach their work
COMMANDS = {
    "eval": ["-m", "{tiny}", "-d", "{ws}/good.jsonl", "--metrics", "efficacy"],
    "edit": ["-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"],
    "downstream": ["-m", "{tiny}", "--tasks", "skills", "--n", "2"],
    "trace": ["-m", "{tiny}", "-d", "{ws}/good.jsonl", "--n", "1", "--samples", "1", "--kinds", "hidden"],
    "report": ["{ws}/dir"],
    "models": [],
    "methods": [],
    "scaling": ["-m", "{tiny}", "-d", "{ws}/good.jsonl", "--sizes", "1,2", "--methods", "ft-l", "--out", "{ws}/dir/s"],
}
SKIP_OPTIONS = {"--help", "--save", "--stats-dir"}


def _options(command: str) -> list[tuple[str, type, bool]]:
    """(flag, type, is a flag without value) of a command's declared options, from the CLI itself."""
    import typer.main

    from editscale.cli import app

    cmd = typer.main.get_command(app).commands[command]
    out = []
    for p in cmd.params:
        if p.param_type_name != "option" or p.opts[0] in SKIP_OPTIONS:
            continue
        out.append((p.opts[0], p.bare_type() if callable(getattr(p, "bare_type", None)) else str, bool(p.is_flag)))
    return out


def _value(kind: type):
    if kind is int:
        return st.integers(-2, 3).map(str)
    if kind is float:
        return st.sampled_from(["nan", "inf", "-1", "0", "0.5", "1e309", "x"])
    return st.one_of(st.sampled_from(["", "nope", "{ws}/good.jsonl", "{ws}/dir", "{ws}/nope/x", "cpu", "meta",
                                      "rome", "ft-l", "efficacy", "a=b", "1"]), texts.filter(lambda t: "\x00" not in t))


def _command_property(world, cli, monkeypatch, tmp_path_factory):
    @given(st.data())
    def prop(data):
        command = data.draw(st.sampled_from(sorted(COMMANDS)))
        options = _options(command)
        chosen = data.draw(st.lists(st.sampled_from(options), max_size=3, unique_by=lambda o: o[0])) if options else []
        args = [a.format(**world) for a in COMMANDS[command]]
        for flag, kind, is_flag in chosen:
            if flag in args:  # replace the base value
                i = args.index(flag)
                del args[i: i + 2]
            args += [flag] if is_flag else [flag, data.draw(_value(kind)).replace("{ws}", str(world["ws"]))]
        folder = tmp_path_factory.mktemp("cmd")
        monkeypatch.chdir(folder)  # default output folders (trace-MODEL) land here
        _check(cli, [command, *args], [world["ws"]], monkeypatch)

    return prop


TARGETS = {"records": _records_property, "configs": _config_property, "grids": _grid_property,
           "command-lines": _command_property}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_fast(target, world, cli, monkeypatch, tmp_path_factory):
    FAST(TARGETS[target](world, cli, monkeypatch, tmp_path_factory))()


@pytest.mark.fuzz
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_long(target, world, cli, monkeypatch, tmp_path_factory):
    LONG(TARGETS[target](world, cli, monkeypatch, tmp_path_factory))()
    print(f"fuzz {target}: {TRIED['n']} inputs tried so far")
