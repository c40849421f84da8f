"""The sequential runner end to end on a tiny random GPT-2 with a stand-in method: what it records, the
guard's rollback, and exact resume after SIGKILL at a random point (in a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from edit_helpers import corpus, small
from pydantic import Field
from tiny import bpe_tokenizer, random_model

from editscale.data import load_cases
from editscale.data.records import EditCase, EditRequest
from editscale.errors import RunStateError
from editscale.experiment.config import sample_cases
from editscale.experiment.guard import single_edit_test
from editscale.experiment.runner import _Run, resume, run_experiment, summarize
from editscale.experiment.store import RunStore
from editscale.methods.base import Delta, EditMethod, Update, register
from editscale.methods.hparams import HparamsBase

TESTS = Path(__file__).parent
COMPARED = {  # per-edit results that must be identical after a resume
    "edits": "SELECT * FROM edits ORDER BY edit_idx",
    "distances": "SELECT * FROM distances ORDER BY update_idx, param",
    "rechecks": "SELECT update_idx, n_edits, n_correct, n_forgotten, forgotten, n_checked_prob, n_forgotten_prob, "
                "forgotten_prob FROM rechecks ORDER BY update_idx",
    "recheck_items": "SELECT * FROM recheck_items ORDER BY update_idx, edit_idx",
    "events": "SELECT update_idx, edit_idx, kind, rule, value, threshold FROM events ORDER BY id",
    "updates": "SELECT update_idx, n_edits, entropy, probe_neighborhood, refused FROM updates ORDER BY update_idx",
}


class NoiseHparams(HparamsBase):
    layer: int | None = Field(None, ge=0)
    scale: float = 0.05
    spike_subjects: list[str] = Field(default_factory=list)  # edits of these subjects are 200x larger ("disabling" edits)
    delay: float = 0.0  # seconds per call, so a test can kill a run mid-way


@register
class NoiseEdit(EditMethod):
    """A stand-in method: a random rank-one update of one MLP output matrix that depends on the current
    weights, the method state (an edit counter) and the torch RNG, so a resume must restore all three."""

    name = "test-noise"
    Hparams = NoiseHparams

    def compute(self, ctx, requests, state):
        hp = self.hparams
        time.sleep(hp.delay)
        w = ctx.anatomy.weight(ctx.model, hp.layer).detach()
        count = int(state.get("count", torch.zeros(())).item()) + len(requests)
        state["count"] = torch.tensor(count)
        spike = 200.0 if any(r.request.subject in hp.spike_subjects for r in requests) else 1.0
        left = torch.randn(w.shape[0], 1) * hp.scale * spike * (1 + float(w.norm()) / 100) * (1 + count / 100)
        right = torch.randn(1, w.shape[1]) / w.shape[1] ** 0.5
        name = ctx.anatomy.weight_name(hp.layer)
        return Delta({name: Update(name, ctx.anatomy.transposed, left=left, right=right)})


def make_fixture(root: Path, n_cases: int = 40) -> tuple[Path, Path]:
    """A tiny GPT-2 directory and a records file of n_cases distinct-subject cases."""
    model_dir, data = root / "model", root / "cases.jsonl"
    if not model_dir.exists():
        tok = bpe_tokenizer()
        random_model("gpt2", vocab_size=len(tok), layers=2).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        (model_dir / "corpus.txt").write_text("\n".join(corpus()) + "\n")  # for the methods' statistics
    rng = random.Random(0)
    words = ["Paris", "London", "Rome", "Tokyo", "Berlin", "Madrid"]
    with data.open("w") as f:
        for i in range(n_cases):
            a, b = rng.sample(words, 2)
            case = EditCase(EditRequest("{} lives in", f"Person{i}", a, b, case_id=str(i)),
                            paraphrase_prompts=(f"Person{i} is a resident of",),
                            neighborhood_prompts=(f"Person{i + 100} lives in",),
                            generation_prompts=("The quick brown fox",))
            f.write(json.dumps(case.to_dict()) + "\n")
    return model_dir, data


def config(model_dir: Path, data: Path, method: str = "test-noise", **kw) -> dict:
    return {"model": str(model_dir), "method": {"name": method, "hparams": kw.pop("hparams", {})},
            "data": str(data), "edits": 30, "batch": 1, "forget_every": 5, "downstream_every": 0, "seed": 1,
            "threads": 1,
            "guard": {"entropy_prompts": 2, "entropy_tokens": 5}, **kw}


def dump(run_dir: Path) -> dict[str, list]:
    with RunStore.in_dir(run_dir) as store:
        return {k: store.rows(q) for k, q in COMPARED.items()}


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("runner"))


def test_run_records_everything(fixture_files, tmp_path):
    model_dir, data = fixture_files
    summary = run_experiment(config(model_dir, data, batch=2, edits=11), tmp_path / "run", progress=False)
    assert summary["edits"] == 11 and set(summary) >= {"efficacy", "paraphrase", "neighborhood", "forgotten",
                                                        "forgotten_prob", "gen_efficacy", "gen_entropy", "flagged"}
    with RunStore.in_dir(tmp_path / "run") as store:
        meta = store.meta()
        assert meta["status"] == "complete" and meta["config"]["edits"] == 11
        assert {"torch", "transformers", "python"} <= set(meta["versions"]) and meta["fingerprint"]
        assert store.rows("SELECT update_idx FROM updates") == [(u,) for u in range(1, 7)]
        assert [r[0] for r in store.rows("SELECT update_idx FROM edits ORDER BY edit_idx")] == [
            1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
        assert store.rows("SELECT update_idx FROM rechecks") == [(5,), (6,)]
        dist = store.frame("distances")
        assert set(dist.param) == {"transformer.h.0.mlp.c_proj.weight"} and set(dist.layer) == {0}
        assert (dist.distance_per_neuron == dist.frobenius / dist.n_neurons).all() and (dist.update_norm > 0).all()
        assert (dist.distance_per_element == dist.frobenius / dist.n_elements).all()
        assert (dist.n_elements == 32 * 128).all()  # the paper's Table 2 divides by the elements
        assert dist.frobenius.is_monotonic_increasing or len(dist) == 6
        assert store.checkpoints() == [(5, 10, "checkpoints/update_000005"), (6, 11, "checkpoints/update_000006")]
    # the latest and the one before it (a resume falls back to it when the latest is damaged)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["update_000005", "update_000006"]
    with pytest.raises(RunStateError, match="another config"):
        run_experiment(config(model_dir, data), tmp_path / "run", progress=False)


def test_guard_flags_and_reverts_disabling_edits(fixture_files, tmp_path):
    model_dir, data = fixture_files
    plan = sample_cases(load_cases(str(data)), 20, seed=1)
    spikes = [plan[7].request.subject, plan[15].request.subject]  # edits 8 and 16
    cfg = config(model_dir, data, edits=20, hparams={"spike_subjects": spikes},
                 guard={"revert": True, "min_history": 3, "entropy_prompts": 0})
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary["flagged"] == [8, 16] and summary["refused"] == [8, 16]
    with RunStore.in_dir(tmp_path / "run") as store:
        dist = dict(store.rows("SELECT update_idx, frobenius FROM distances"))
        assert dist[8] == dist[7] and dist[16] == dist[15]  # reverted exactly
        assert store.rows("SELECT refused FROM edits WHERE edit_idx IN (8, 16)") == [(1,), (1,)]
        rules = {r[0] for r in store.rows("SELECT rule FROM events WHERE kind = 'flagged'")}
        assert rules >= {"update_norm", "distance_jump"}
    table2 = single_edit_test(tmp_path / "run", n_normal=3)  # the flagged edits alone, on the unedited model
    assert [r["edit_idx"] for r in table2["edits"] if r["kind"] == "flagged"] == [8, 16]
    assert table2["normal"]["n"] == 3 and table2["ratio"] > 50


def test_entropy_every_measures_on_schedule_and_on_flags_and_changes_no_edit(fixture_files, tmp_path):
    model_dir, data = fixture_files
    plan = sample_cases(load_cases(str(data)), 14, seed=1)
    spikes = [plan[6].request.subject]  # edit 7: flagged by the cheap rules, so its entropy is measured too
    runs = {}
    for every in (1, 4):
        cfg = config(model_dir, data, edits=14, hparams={"spike_subjects": spikes},
                     guard={"min_history": 3, "entropy_prompts": 2, "entropy_tokens": 5, "entropy_every": every})
        run_experiment(cfg, tmp_path / f"every{every}", progress=False)
        runs[every] = dump(tmp_path / f"every{every}")
    measured = [u for u, _, entropy, _, _ in runs[4]["updates"] if entropy is not None]
    assert measured == [4, 7, 8, 12]
    every1 = {u: e for u, _, e, _, _ in runs[1]["updates"]}
    assert all(every1[u] == e for u, _, e, _, _ in runs[4]["updates"] if e is not None)  # the same draws
    assert all(runs[1][k] == runs[4][k] for k in ("edits", "distances", "rechecks", "recheck_items"))


def _run_in_subprocess(args: list[str]) -> subprocess.Popen:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_experiment_runner as t; "
            "t.subprocess_main(sys.argv[2:])")
    env = {**os.environ, "EDITSCALE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(TESTS), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def subprocess_main(args: list[str]) -> None:
    """Entry point of the subprocesses: ``run CONFIG_JSON RUN_DIR``, ``resume RUN_DIR``, ``cli ARGS...`` (the
    editscale command with the test method registered), or ``slow-setup``/``slow-baseline CONFIG_JSON
    RUN_DIR`` (a run that stops for a while inside its setup directory, or right after the run directory
    appears, so a test can kill it there)."""
    from editscale.experiment import runner

    if args[0] == "cli":
        from editscale.cli import main

        main(args[1:])
        return
    if args[0] == "slow-setup":
        write_plan = RunStore.write_plan

        def slow_plan(self, rows):
            write_plan(self, rows)
            time.sleep(30)

        RunStore.write_plan = slow_plan
    if args[0] == "slow-baseline":
        baseline = runner._Run.baseline

        def slow_baseline(self):
            time.sleep(30)
            baseline(self)

        runner._Run.baseline = slow_baseline
    if args[0] == "resume":
        resume(args[1], progress=False)
    else:
        run_experiment(json.loads(Path(args[1]).read_text()), args[2], progress=False)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_two_runs_into_one_directory_one_runs_the_other_is_refused(fixture_files, tmp_path):
    model_dir, data = fixture_files
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(config(model_dir, data, edits=8, hparams={"delay": 1.0})))
    second.write_text(json.dumps(config(model_dir, data, edits=20)))
    run_dir = tmp_path / "run"
    proc = _run_in_subprocess(["run", str(first), str(run_dir)])
    lock = tmp_path / ".run.lock"
    _wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(proc.pid), proc, "the lock is taken")
    other = _run_in_subprocess(["cli", "run", str(second), "--out", str(run_dir)])
    again = _run_in_subprocess(["cli", "run", "--resume", str(run_dir)])  # --resume too
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2
    assert err == f"error: {run_dir} is in use by another editscale process (pid {proc.pid}); wait for it to " \
                  "finish, or choose another --out\n"
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and f"in use by another editscale process (pid {proc.pid})" in err
    assert proc.poll() is None, "the first run ended before the others were refused; make it slower"
    assert proc.wait(timeout=300) == 0
    with RunStore.in_dir(run_dir) as store:
        assert store.meta()["config"]["edits"] == 8 and store.n_edits_done() == 8
    assert not lock.exists()  # released and removed at the end


@pytest.mark.parametrize("where", ["slow-setup", "slow-baseline"])
def test_sigkill_during_setup_leaves_no_run_or_one_that_resumes(where, fixture_files, tmp_path):
    """Killed inside the setup directory, nothing is left but that directory, which the next run removes;
    killed after the run directory appeared (in the baseline), ``--resume`` and ``run --out`` continue it. Both
    end with per-edit results identical to an uninterrupted run's."""
    model_dir, data = fixture_files
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(config(model_dir, data, edits=12)))
    ref = _run_in_subprocess(["run", str(cfg_file), str(tmp_path / "ref")])
    killed = tmp_path / "killed"
    proc = _run_in_subprocess([where, str(cfg_file), str(killed)])
    if where == "slow-setup":
        _wait_for(lambda: any(tmp_path.glob(".killed.setup-*/results.sqlite")), proc, "the setup")
    else:
        _wait_for(lambda: (killed / "results.sqlite").is_file(), proc, "the run directory")
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ref.wait(timeout=300) == 0, ref.communicate()[1]
    if where == "slow-setup":
        assert not killed.exists() and list(tmp_path.glob(".killed.setup-*"))
        res = _run_in_subprocess(["cli", "run", str(cfg_file), "--out", str(killed)])  # starts afresh
    else:
        with RunStore.in_dir(killed) as store:
            assert "baseline" not in store.meta() and store.plan()
        res = _run_in_subprocess(["cli", "run", str(cfg_file), "--out", str(killed)])  # the same config resumes
    _, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    assert ("continuing the run" in err) == (where == "slow-baseline")
    assert dump(killed) == dump(tmp_path / "ref")
    assert not list(tmp_path.glob(".killed.*"))  # no setup directory, no lock left


def test_resume_after_sigkill_is_identical(fixture_files, tmp_path):
    model_dir, data = fixture_files
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(config(model_dir, data, edits=30, hparams={"delay": 0.05})))
    killed = tmp_path / "killed"
    ref = _run_in_subprocess(["run", str(cfg_file), str(tmp_path / "ref")])  # the two run side by side
    proc = _run_in_subprocess(["run", str(cfg_file), str(killed)])
    rng = random.Random()
    target = rng.randint(7, 24)  # kill somewhere in the update after this one, mid-run
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        db = killed / "results.sqlite"
        if db.exists():
            with contextlib.suppress(sqlite3.OperationalError, RunStateError), RunStore(db) as store:  # half-made?
                if store.last_update() >= target:
                    break
        time.sleep(0.02)
    time.sleep(rng.random() * 0.05)
    assert proc.poll() is None, f"the run finished before it could be killed after update {target}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    expected = dump(tmp_path / "ref")
    assert len(expected["edits"]) == 30
    with RunStore.in_dir(killed) as store:
        assert store.meta()["status"] == "running" and store.last_update() < 30
    res = _run_in_subprocess(["resume", str(killed)])
    _, err = res.communicate(timeout=300)
    assert res.returncode == 0, err
    assert dump(killed) == expected, f"killed after update {target}"
    def measured(run_dir):  # the summary but the method's timing
        return {k: v for k, v in summarize(run_dir).items() if k != "method_seconds_per_edit"}

    assert measured(killed) == measured(tmp_path / "ref")


def test_cli_run_resume_single_edit_test_and_errors(fixture_files, tmp_path, cli):
    model_dir, data = fixture_files
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {model_dir}\nmethod: {{name: ft-l, hparams: {{steps: 2}}}}\ndata: {data}\n"
                   "edits: 6\nbatch: 1\nforget_every: 3\ndownstream_every: 0\nseed: 0\nthreads: 1\n")
    code, out, err = cli("run", str(cfg), "--out", str(tmp_path / "r"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) >= {"edits", "efficacy", "paraphrase", "neighborhood", "forgotten", "flagged"}
    assert summary["edits"] == 6
    code, out, _ = cli("run", "--resume", str(tmp_path / "r"), "--json")  # already complete
    assert code == 0 and json.loads(out) == summary
    code, out, err = cli("single-edit-test", str(tmp_path / "r"), "--normal", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["flagged"]["n"] == 0 and result["normal"]["n"] == 2
    assert result["normal"]["distance_per_element"] > 0

    cfg.write_text(cfg.read_text().replace("forget_every: 3", "forget_every: 0"))
    code, out, err = cli("run", str(cfg), "--out", str(tmp_path / "bad"))
    assert code == 2 and err.count("\n") == 1 and "field 'forget_every'" in err
    assert not (tmp_path / "bad").exists()
    code, _, err = cli("run", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "no results database" in err


@pytest.mark.parametrize("method", ["rome", "alphaedit"])
def test_real_methods_interrupted_and_resumed_match(method, fixture_files, tmp_path, monkeypatch):
    """With a real method: statistics and context prefixes come back the same in a new Editor (AlphaEdit: its
    projectors from the unedited model, the earlier edits' keys from the checkpoint's method state)."""
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))
    model_dir, data = fixture_files
    cfg = config(model_dir, data, method, hparams=small(method), edits=12, forget_every=4)
    run_experiment(cfg, tmp_path / "ref", progress=False)
    step = _Run.step

    def crash_at_7(self, u):
        if u == 7:
            raise KeyboardInterrupt
        return step(self, u)

    monkeypatch.setattr(_Run, "step", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(_Run, "step", step)
    with RunStore.in_dir(tmp_path / "run") as store:
        assert store.last_update() == 6 and store.checkpoints()[0][0] == 4
    resume(tmp_path / "run", progress=False)
    assert dump(tmp_path / "run") == dump(tmp_path / "ref")


def test_demo_plumbing(fixture_files, tmp_path, monkeypatch):
    """``run_demo`` without the testbed: one run per method, the report, a rerun reuses finished runs."""
    from editscale import demo as runner
    from editscale import names as loading

    model_dir, data = fixture_files
    monkeypatch.setattr(loading, "resolve_model_path", lambda name: str(model_dir))
    monkeypatch.setattr(runner, "demo_config", lambda method, edits: runner.parse_config(
        config(model_dir, data, method, edits=edits, forget_every=3)))
    page, dirs, done_before = runner.run_demo(tmp_path / "demo", edits=6, methods=("test-noise",), progress=False)
    assert page == tmp_path / "demo" / "report" / "report.html" and page.is_file() and done_before == 0
    assert dirs == [tmp_path / "demo" / "test-noise"]
    assert summarize(tmp_path / "demo" / "test-noise")["edits"] == 6
    again = runner.run_demo(tmp_path / "demo", edits=6, methods=("test-noise",), progress=False)
    assert again == (page, dirs, 1)  # the run was complete: said, and the report written again
    with pytest.raises(RunStateError, match="another config"):
        runner.run_demo(tmp_path / "demo", edits=7, methods=("test-noise",), progress=False)


def test_demo_command_says_its_threads_first_and_prints_the_summary(fixture_files, tmp_path, monkeypatch, cli):
    from editscale import demo as runner
    from editscale import names as loading

    model_dir, data = fixture_files
    monkeypatch.setattr(loading, "resolve_model_path", lambda name: str(model_dir))
    monkeypatch.setattr(runner, "demo_config", lambda method, edits: runner.parse_config(
        config(model_dir, data, method, edits=edits, forget_every=5)))
    code, out, err = cli("--threads", "1", "demo", "--edits", "10", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    assert err.startswith("editscale demo: 5 methods x 10 sequential edits") and "on 1 CPU threads" in err.splitlines()[0]
    assert "forgotten %" in out and "encore" in out and out.strip().endswith("report.html"), out
    code, out, err = cli("--threads", "1", "demo", "--edits", "10", "--out", str(tmp_path / "demo"))
    assert code == 0 and "complete already" in err
