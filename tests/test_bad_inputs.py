"""The bad-input table (issue 16): every kind of bad input or misuse a new user tried, run through the CLI in
process. Each case gives the command, the input, the expected exit status and a fragment of the one-line
error; every case also checks that the error is one line (no traceback) and that no file was written or
changed (the workspace, the cached tiny testbed, and the output places).

Inputs are built once per module in a workspace: records and configs, copies of the tiny testbed with NaN,
infinite, truncated or garbage weights, a finished run, a corrupt run database, and, where this machine lets
the tests mount file systems, read-only and full storage (the same checks are also made with the storage
probe failing, which runs everywhere).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import Field

from editscale.cache import FILES_MANIFEST
from editscale.methods.base import Delta, EditMethod, Update, register
from editscale.methods.hparams import HparamsBase

TINY_CONFIG = ("model: {tiny}\nmethod: {{name: ft-l, hparams: {{steps: 1}}}}\ndata: {records}\nedits: 2\n"
               "forget_every: 1\nthreads: 1\nmetrics: [efficacy]\nguard: {{enabled: false}}\n")


@dataclass
class Case:
    id: str
    args: list[str]  # formatted with the workspace's paths
    code: int
    match: str  # a fragment of the error line (case-insensitive)
    needs: str = ""  # "ro" / "full": a mounted file system this machine may not allow
    patch: str = ""  # "probe_rofs" / "probe_full": the storage probe fails as on such storage
    files: dict[str, str] = field(default_factory=dict)  # extra input files for this case, {path: text}


def _write_records(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORD = {"prompt": "{} lives in", "subject": "Alice Smith", "target_new": "Paris", "target_true": "Rome"}

CASES = [
    # --- records files --------------------------------------------------------------------------------------
    Case("records-not-utf8", ["eval", "-m", "{tiny}", "-d", "{ws}/latin1.jsonl"], 2, "not UTF-8"),
    Case("records-json-not-utf8", ["eval", "-m", "{tiny}", "-d", "{ws}/latin1.json"], 2, "not UTF-8"),
    Case("jsonl-missing-field", ["eval", "-m", "{tiny}", "-d", "{ws}/missing_field.jsonl"], 2, "line 2"),
    Case("native-request-missing-field", ["eval", "-m", "{tiny}", "-d", "{ws}/native_missing.jsonl"], 2,
         "line 1"),
    Case("records-missing", ["eval", "-m", "{tiny}", "-d", "{ws}/nope.jsonl"], 2, "does not exist"),
    Case("records-directory", ["eval", "-m", "{tiny}", "-d", "{ws}"], 2, "is a directory"),
    Case("records-invalid-json-line", ["eval", "-m", "{tiny}", "-d", "{ws}/bad_line.jsonl"], 2, "invalid JSON"),
    Case("records-empty", ["eval", "-m", "{tiny}", "-d", "{ws}/empty.jsonl"], 2, "no valid records"),
    Case("records-not-a-list", ["eval", "-m", "{tiny}", "-d", "{ws}/number.json"], 2, "expected a JSON list"),
    Case("records-item-not-object", ["eval", "-m", "{tiny}", "-d", "{ws}/list_of_str.json"], 2,
         "expected a JSON object"),
    Case("records-subject-not-in-prompt", ["eval", "-m", "{tiny}", "-d", "{ws}/no_subject.jsonl"], 2, "subject"),
    Case("records-unknown-shape", ["eval", "-m", "{tiny}", "-d", "{ws}/unknown_shape.jsonl"], 2, "line 1"),
    Case("records-field-wrong-type", ["eval", "-m", "{tiny}", "-d", "{ws}/wrong_type.jsonl"], 2, "must be"),
    Case("data-unknown-testbed", ["eval", "-m", "{tiny}", "-d", "testbed:nope"], 2, "unknown testbed"),
    Case("limit-zero", ["eval", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--limit", "0"], 2, "--limit"),
    # --- run configs ----------------------------------------------------------------------------------------
    Case("config-not-utf8", ["run", "{ws}/latin1.yaml", "--out", "{ws}/out/r"], 2, "not UTF-8"),
    Case("config-edits-true", ["run", "{ws}/edits_true.yaml", "--out", "{ws}/out/r"], 2, "field 'edits'"),
    Case("config-edits-string", ["run", "{ws}/edits_str.yaml", "--out", "{ws}/out/r"], 2, "field 'edits'"),
    Case("config-batch-float", ["run", "{ws}/batch_float.yaml", "--out", "{ws}/out/r"], 2, "field 'batch'"),
    Case("config-missing-data", ["run", "{ws}/no_data.yaml", "--out", "{ws}/out/r"], 2, "field 'data' is missing"),
    Case("config-unknown-field", ["run", "{ws}/unknown_field.yaml", "--out", "{ws}/out/r"], 2, "unknown field"),
    Case("config-not-mapping", ["run", "{ws}/list.yaml", "--out", "{ws}/out/r"], 2, "must be a mapping"),
    Case("config-empty", ["run", "{ws}/empty.yaml", "--out", "{ws}/out/r"], 2, "must be a mapping"),
    Case("config-invalid-yaml", ["run", "{ws}/invalid.yaml", "--out", "{ws}/out/r"], 2, "not valid YAML"),
    Case("config-missing", ["run", "{ws}/nope.yaml", "--out", "{ws}/out/r"], 2, "does not exist"),
    Case("config-directory", ["run", "{ws}", "--out", "{ws}/out/r"], 2, "is a directory"),
    Case("config-unknown-method", ["run", "{ws}/bad_method.yaml", "--out", "{ws}/out/r"], 2, "method.name"),
    Case("config-threads-zero", ["run", "{ws}/threads_zero.yaml", "--out", "{ws}/out/r"], 2, "field 'threads'"),
    Case("config-unknown-metric", ["run", "{ws}/bad_metric.yaml", "--out", "{ws}/out/r"], 2,
         "unknown per-edit metric"),
    Case("config-guard-revert-int", ["run", "{ws}/guard_int.yaml", "--out", "{ws}/out/r"], 2, "guard.revert"),
    Case("config-data-missing-file", ["run", "{ws}/data_missing.yaml", "--out", "{ws}/out/r"], 2, "does not exist"),
    Case("config-model-missing-dir", ["run", "{ws}/model_missing.yaml", "--out", "{ws}/out/r"], 2,
         "does not exist"),
    Case("config-bogus-device", ["run", "{ws}/bogus_device.yaml", "--out", "{ws}/out/r"], 2, "device"),
    Case("config-too-many-edits", ["run", "{ws}/too_many.yaml", "--out", "{ws}/out/r"], 2, "field 'edits'"),
    Case("run-no-out", ["run", "{ws}/good.yaml"], 2, "--out"),
    Case("run-resume-with-config", ["run", "{ws}/good.yaml", "--resume", "{ws}/done"], 2, "takes no CONFIG"),
    Case("run-resume-missing", ["run", "--resume", "{ws}/nothing"], 2, "no results database"),
    Case("run-resume-corrupt-db", ["run", "--resume", "{ws}/corrupt_run"], 2, "not a readable"),
    Case("run-resume-text-db", ["run", "--resume", "{ws}/text_run"], 2, "not a readable"),
    Case("run-out-other-config", ["run", "{ws}/other.yaml", "--out", "{ws}/done"], 2, "another config"),
    Case("run-out-same-config-complete", ["run", "{ws}/good.yaml", "--out", "{ws}/done", "--json"], 0,
         "this run is complete"),
    Case("run-resume-complete", ["run", "--resume", "{ws}/done", "--json"], 0, ""),
    Case("run-out-not-a-run", ["run", "{ws}/good.yaml", "--out", "{ws}/not_a_run"], 2, "run directory"),
    Case("run-out-is-file", ["run", "{ws}/good.yaml", "--out", "{ws}/good.jsonl"], 2, "is a file"),
    Case("run-out-in-cache", ["run", "{ws}/good.yaml", "--out", "{cache}/my-run"], 2, "inside editscale's cache"),
    Case("run-out-readonly", ["run", "{ws}/good.yaml", "--out", "{ro}/r"], 2, "read-only", needs="ro"),
    Case("run-out-full", ["run", "{ws}/good.yaml", "--out", "{full}/r"], 2, "storage is full", needs="full"),
    Case("run-out-probe-readonly", ["run", "{ws}/good.yaml", "--out", "{ws}/out/r"], 2, "read-only",
         patch="probe_rofs"),
    Case("run-out-probe-full", ["run", "{ws}/good.yaml", "--out", "{ws}/out/r"], 2, "storage is full",
         patch="probe_full"),
    # --- run databases ----------------------------------------------------------------------------------------
    Case("report-corrupt-db", ["report", "{ws}/corrupt_run", "--out", "{ws}/out/rep"], 2, "not a readable"),
    Case("report-text-db", ["report", "{ws}/text_run", "--out", "{ws}/out/rep"], 2, "not a readable"),
    Case("report-missing-run", ["report", "{ws}/nothing", "--out", "{ws}/out/rep"], 2, "run directory"),
    Case("report-out-readonly", ["report", "{ws}/done", "--out", "{ro}/rep"], 2, "read-only", needs="ro"),
    Case("report-out-probe-readonly", ["report", "{ws}/done", "--out", "{ws}/out/rep"], 2, "read-only",
         patch="probe_rofs"),
    Case("report-out-in-cache", ["report", "{ws}/done", "--out", "{cache}/rep"], 2, "inside editscale's cache"),
    Case("single-edit-test-corrupt-db", ["single-edit-test", "{ws}/corrupt_run"], 2, "not a readable"),
    # --- models ---------------------------------------------------------------------------------------------------
    Case("model-missing-dir", ["eval", "-m", "{ws}/no_model", "-d", "{ws}/good.jsonl"], 2, "does not exist"),
    Case("model-dir-without-config", ["eval", "-m", "{ws}/not_a_run", "-d", "{ws}/good.jsonl"], 2,
         "no config.json"),
    Case("model-truncated-safetensors", ["eval", "-m", "{ws}/m_trunc", "-d", "{ws}/good.jsonl"], 2, "truncated"),
    Case("model-garbage-safetensors", ["eval", "-m", "{ws}/m_garbage", "-d", "{ws}/good.jsonl"], 2,
         "not a safetensors file"),
    Case("model-nan-weights", ["eval", "-m", "{ws}/m_nan", "-d", "{ws}/good.jsonl"], 2, "NaN or infinite"),
    Case("model-inf-weights", ["eval", "-m", "{ws}/m_inf", "-d", "{ws}/good.jsonl"], 2, "NaN or infinite"),
    Case("edit-nan-model", ["edit", "-m", "{ws}/m_nan", "--method", "rome", "--prompt", "{{}} lives in",
                            "--subject", "Alice", "--target", "Paris"], 2, "NaN or infinite"),
    Case("model-unknown-testbed", ["eval", "-m", "testbed:nope", "-d", "{ws}/good.jsonl"], 2, "unknown testbed"),
    Case("testbed-cache-truncated", ["eval", "-m", "testbed:tiny", "-d", "{ws}/good.jsonl"], 2, "damaged",
         patch="home_truncated"),
    Case("testbed-build-cache-truncated", ["testbed", "build", "tiny"], 2, "--force", patch="home_truncated"),
    Case("model-missing-gguf", ["eval", "-m", "{ws}/nope.gguf", "-d", "{ws}/good.jsonl"], 2, "does not exist"),
    Case("bogus-device", ["eval", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--device", "bogus"], 2,
         "unknown device"),
    Case("cuda-without-gpu", ["eval", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--device", "cuda"], 2,
         "no CUDA GPU", needs="nocuda"),
    Case("cuda-index-without-gpu", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                                    "--target", "Paris", "--device", "cuda:3"], 2, "cuda", needs="nocuda"),
    Case("unknown-dtype", ["eval", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--dtype", "float8"], 2,
         "unknown dtype"),
    Case("downstream-bogus-device", ["downstream", "-m", "{tiny}", "--tasks", "skills", "--device", "nope:0"], 2,
         "device"),
    # --- edit and --save ----------------------------------------------------------------------------------------
    Case("save-onto-existing-dir", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                                    "--target", "Paris", "--save", "{ws}/not_a_run"], 2, "already exists"),
    Case("save-onto-file", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                            "--target", "Paris", "--save", "{ws}/good.jsonl"], 2, "already exists"),
    Case("save-into-cached-testbed", ["edit", "-m", "testbed:tiny", "--prompt", "{{}} lives in", "--subject",
                                      "Alice", "--target", "Paris", "--save", "{tiny}"], 2, "inside editscale's cache"),
    Case("save-into-cache-new-dir", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                                     "--target", "Paris", "--save", "{cache}/edited"], 2, "inside editscale's cache"),
    Case("save-readonly", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                           "--target", "Paris", "--save", "{ro}/edited"], 2, "read-only", needs="ro"),
    Case("save-full", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                       "--target", "Paris", "--save", "{full}/edited"], 2, "storage is full", needs="full"),
    Case("save-probe-full", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice",
                             "--target", "Paris", "--save", "{ws}/out/edited"], 2, "storage is full",
         patch="probe_full"),
    Case("edit-data-and-prompt", ["edit", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--prompt", "{{}} x"], 2,
         "either --data"),
    Case("edit-missing-target", ["edit", "-m", "{tiny}", "--prompt", "{{}} lives in", "--subject", "Alice"], 2,
         "missing --target"),
    Case("edit-subject-not-in-prompt", ["edit", "-m", "{tiny}", "--prompt", "Bob lives in", "--subject", "Alice",
                                        "--target", "Paris"], 2, "subject"),
    Case("edit-unknown-method", ["edit", "-m", "{tiny}", "--method", "nope", "--prompt", "{{}} lives in",
                                 "--subject", "Alice", "--target", "Paris"], 2, "nope"),
    Case("edit-set-without-equals", ["edit", "-m", "{tiny}", "--method", "rome", "--set", "layer",
                                     "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "KEY=VALUE"),
    Case("edit-set-unknown-hparam", ["edit", "-m", "{tiny}", "--method", "rome", "--set", "nope=1",
                                     "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "nope"),
    Case("edit-hparams-missing", ["edit", "-m", "{tiny}", "--method", "rome", "--hparams", "{ws}/nope.yaml",
                                  "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "nope.yaml"),
    Case("edit-hparams-not-utf8", ["edit", "-m", "{tiny}", "--method", "rome", "--hparams", "{ws}/latin1.yaml",
                                   "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "UTF-8"),
    Case("edit-layer-out-of-range", ["edit", "-m", "{tiny}", "--method", "rome", "--set", "layer=7",
                                     "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "layer"),
    Case("edit-corpus-missing", ["edit", "-m", "{tiny}", "--method", "rome", "--corpus", "{ws}/nope.txt",
                                 "--prompt", "{{}} lives in", "--subject", "Alice", "--target", "Paris"], 2,
         "does not exist"),
    # --- other commands -------------------------------------------------------------------------------------------
    Case("downstream-unknown-task", ["downstream", "-m", "{tiny}", "--tasks", "nope"], 2, "nope"),
    Case("downstream-missing-data-dir", ["downstream", "-m", "{tiny}", "--tasks", "sst2", "--data-dir",
                                         "{ws}/nope"], 2, "nope"),
    Case("trace-unknown-kind", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--kinds", "nope",
                                "--out", "{ws}/out/t"], 2, "nope"),
    Case("trace-missing-data", ["trace", "-m", "{tiny}", "-d", "{ws}/nope.jsonl", "--out", "{ws}/out/t"], 2,
         "does not exist"),
    Case("testbed-unknown", ["testbed", "build", "nope"], 2, "unknown testbed"),
    Case("testbed-build-cache-full", ["testbed", "build", "tiny"], 2, "storage is full", patch="probe_full_home"),
    Case("demo-out-full", ["demo", "--out", "{ws}/out/demo"], 2, "storage is full", patch="probe_full"),
    Case("demo-out-in-cache", ["demo", "--out", "{cache}/demo"], 2, "inside editscale's cache"),
    Case("threads-zero", ["--threads", "0", "models"], 2, "--threads"),
    Case("cache-verify-unknown", ["cache", "verify", "nope"], 2, "nope"),
    # --- second round (issue 25) ----------------------------------------------------------------------------------
    # inputs longer than the model's context, refused before any work
    Case("eval-record-longer-than-context", ["eval", "-m", "{tiny}", "-d", "{ws}/long.jsonl"], 2,
         "longer than the model's context"),
    Case("eval-method-record-longer-than-context", ["eval", "-m", "{tiny}", "-d", "{ws}/long.jsonl", "--method",
                                                    "rome"], 2, "longer than the model's context"),
    Case("edit-prompt-longer-than-context", ["edit", "-m", "{tiny}", "--prompt", "{long_prompt}", "--subject",
                                             "Alice", "--target", "Paris"], 2, "longer than the model's context"),
    Case("edit-data-longer-than-context", ["edit", "-m", "{tiny}", "-d", "{ws}/long.jsonl"], 2,
         "longer than the model's context"),
    Case("run-record-longer-than-context", ["run", "{ws}/long.yaml", "--out", "{ws}/out/r"], 2,
         "longer than the model's context"),
    Case("records-nested-too-deep", ["eval", "-m", "{tiny}", "-d", "{ws}/deep.json"], 2, "nested too deeply"),
    Case("records-jsonl-nested-too-deep", ["eval", "-m", "{tiny}", "-d", "{ws}/deep.jsonl"], 2, "nested too deeply"),
    Case("device-meta", ["eval", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--device", "meta"], 2, "holds no data"),
    # output folders checked before the work
    Case("trace-out-onto-file", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--out", "{ws}/good.jsonl"], 2,
         "is a file"),
    Case("report-out-onto-file", ["report", "{ws}/done", "--out", "{ws}/good.jsonl"], 2, "is a file"),
    Case("trace-out-in-cached-testbed", ["trace", "-m", "testbed:tiny", "-d", "{ws}/good.jsonl", "--out",
                                         "{tiny}/trace"], 2, "inside editscale's cache"),
    Case("trace-out-holding-report", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--out", "{ws}/a_report"],
         2, "`editscale report`'s output"),
    Case("report-out-holding-trace-files", ["report", "{ws}/done", "--out", "{ws}/trace_files"], 2,
         "files of the same names"),
    Case("trace-noise-nan", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--noise-factor", "nan"], 2,
         "positive finite"),
    Case("trace-noise-inf", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--noise-factor", "inf"], 2,
         "positive finite"),
    Case("trace-no-known-facts", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--out", "{ws}/out/t"], 2,
         "--all-facts"),
    # models whose files disagree
    Case("model-config-more-layers", ["eval", "-m", "{ws}/m_layers", "-d", "{ws}/good.jsonl"], 2,
         "do not cover its config"),
    Case("model-invalid-config-json", ["eval", "-m", "{ws}/m_badconfig", "-d", "{ws}/good.jsonl"], 2,
         "config.json is not valid JSON"),
    Case("model-without-tokenizer", ["eval", "-m", "{ws}/m_notok", "-d", "{ws}/good.jsonl"], 2, "has no tokenizer"),
    # configs and the environment
    Case("config-duplicate-key", ["run", "{ws}/dup_key.yaml", "--out", "{ws}/out/r"], 2, "duplicate key 'edits'"),
    Case("config-bad-hparam-type", ["run", "{ws}/bad_hparam.yaml", "--out", "{ws}/out/r"], 2, "method.hparams"),
    Case("run-a-grid-file", ["run", "{ws}/bad_cell_grid.yaml", "--out", "{ws}/out/r"], 2,
         "is a grid file (it has 'grid:'), not one run's config; run its cells with `editscale sweep"),
    Case("sweep-one-bad-cell", ["sweep", "{ws}/bad_cell_grid.yaml", "--out", "{ws}/out/s", "--local"], 2,
         "method.hparams"),
    Case("home-is-a-file", ["models"], 2, "is a file, not a folder", patch="home_file"),
    Case("cache-list-home-is-a-file", ["cache", "list"], 2, "is a file, not a folder", patch="home_file"),
    Case("progress-interval-not-a-number", ["models"], 2, "EDITSCALE_PROGRESS_INTERVAL", patch="interval_abc"),
    # usage errors are one line
    Case("usage-threads-zero-one-line", ["--threads", "0", "models"], 2, "see `editscale --help`"),
    Case("usage-n-zero-one-line", ["trace", "-m", "{tiny}", "-d", "{ws}/good.jsonl", "--n", "0"], 2,
         "see `editscale trace --help`"),
    Case("usage-unknown-option-one-line", ["eval", "--bogus"], 2, "no such option"),
]


def _mount(args: list[str]) -> bool:
    try:
        return subprocess.run(args, check=False, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and directory under the roots (hidden ones too: lock and setup files)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns if p.is_file() else 0)
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_testbed):
    """Every input of the table, made once; the finished run is made with the library (a tiny ft-l run)."""
    import torch
    from safetensors.torch import load_file, save_file

    from editscale.experiment.runner import run_experiment

    ws = tmp_path_factory.mktemp("bad")
    records = ws / "good.jsonl"
    _write_records(records, [dict(RECORD, subject=f"Person{i}", prompt="{} lives in") for i in range(6)])
    (ws / "latin1.jsonl").write_bytes(json.dumps(dict(RECORD, subject="Jos\u00e9"), ensure_ascii=False)
                                      .encode("latin-1") + b"\n")
    (ws / "latin1.json").write_bytes(json.dumps([dict(RECORD, subject="Jos\u00e9")], ensure_ascii=False)
                                     .encode("latin-1"))
    _write_records(ws / "missing_field.jsonl", [RECORD, {k: v for k, v in RECORD.items() if k != "target_new"}])
    _write_records(ws / "native_missing.jsonl", [{"request": {"prompt": "{} lives in", "subject": "Alice"}}])
    (ws / "bad_line.jsonl").write_text(json.dumps(RECORD) + "\n{not json\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "number.json").write_text("42")
    (ws / "list_of_str.json").write_text('["a", "b"]')
    _write_records(ws / "no_subject.jsonl", [dict(RECORD, prompt="Bob lives in")])
    _write_records(ws / "unknown_shape.jsonl", [{"question": "where?", "answer": "here"}])
    _write_records(ws / "wrong_type.jsonl", [dict(RECORD, target_new=5)])
    long_subject = " ".join(["Bartholomew"] * 400)
    _write_records(ws / "long.jsonl", [RECORD, dict(RECORD, subject=long_subject, case_id="the-long-one")])
    (ws / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (ws / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    config = TINY_CONFIG.format(tiny=tiny_testbed, records=records)
    configs = {
        "good": config,
        "other": config.replace("edits: 2", "edits: 3"),
        "edits_true": config.replace("edits: 2", "edits: true"),
        "edits_str": config.replace("edits: 2", "edits: '2'"),
        "batch_float": config + "batch: 1.5\n",
        "no_data": "\n".join(line for line in config.splitlines() if not line.startswith("data:")),
        "unknown_field": config + "edit: 3\n",
        "list": "- model\n- data\n",
        "empty": "",
        "invalid": "model: [unclosed\n",
        "bad_method": config.replace("name: ft-l", "name: nope"),
        "threads_zero": config.replace("threads: 1", "threads: 0"),
        "bad_metric": config.replace("[efficacy]", "[nope]"),
        "guard_int": config.replace("{enabled: false}", "{enabled: false, revert: 3}"),
        "data_missing": config.replace(str(records), str(ws / "nope.jsonl")),
        "model_missing": config.replace(str(tiny_testbed), str(ws / "no_model")),
        "bogus_device": config + "device: bogus\n",
        "too_many": config.replace("edits: 2", "edits: 500"),
        "long": config.replace(str(records), str(ws / "long.jsonl")),
        "dup_key": config + "edits: 3\n",
        "bad_hparam": config.replace("{steps: 1}", "{steps: many}"),
        "bad_cell_grid": "\n".join(line for line in config.splitlines() if not line.startswith("method:"))
        + "\ngrid:\n  method: [{name: ft-l, hparams: {steps: 1}}, {name: ft-l, hparams: {steps: many}}]\n",
    }
    for name, text in configs.items():
        (ws / f"{name}.yaml").write_text(text)
    (ws / "latin1.yaml").write_bytes(config.encode() + "# caf\u00e9\n".encode("latin-1"))
    # model copies: truncated, garbage, NaN and inf weights
    for name in ("m_trunc", "m_garbage", "m_nan", "m_inf", "m_layers", "m_badconfig", "m_notok"):
        shutil.copytree(tiny_testbed, ws / name, ignore=shutil.ignore_patterns(FILES_MANIFEST))
    weights = ws / "m_trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (ws / "m_garbage" / "model.safetensors").write_bytes(os.urandom(4096))
    for name, value in (("m_nan", float("nan")), ("m_inf", float("inf"))):
        path = ws / name / "model.safetensors"
        tensors = load_file(str(path))
        key = next(k for k, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = value
        save_file(tensors, str(path), metadata={"format": "pt"})
    assert torch.isnan(load_file(str(ws / "m_nan" / "model.safetensors"))[key]).any()
    cfg = json.loads((ws / "m_layers" / "config.json").read_text())
    cfg["n_layer"] += 1  # the config says one layer more than the weights hold
    (ws / "m_layers" / "config.json").write_text(json.dumps(cfg))
    (ws / "m_badconfig" / "config.json").write_text("{not json")
    for f in (ws / "m_notok").iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()
    # output folders of other commands
    (ws / "a_report").mkdir()
    (ws / "a_report" / ".editscale-output.json").write_text('{"command": "report"}')
    (ws / "a_report" / "report.html").write_text("<html></html>")
    (ws / "trace_files").mkdir()
    (ws / "trace_files" / "report.html").write_text("mine")
    # run directories: a finished one, a corrupt database, a text file as database, a folder that is no run
    run_experiment(ws / "good.yaml", ws / "done", progress=False)
    (ws / "corrupt_run").mkdir()
    db = (ws / "done" / "results.sqlite").read_bytes()
    (ws / "corrupt_run" / "results.sqlite").write_bytes(db[:100] + os.urandom(len(db) - 100))
    (ws / "text_run").mkdir()
    (ws / "text_run" / "results.sqlite").write_text("this is not a database\n")
    (ws / "not_a_run").mkdir()
    (ws / "not_a_run" / "notes.txt").write_text("mine\n")
    (ws / "out").mkdir()
    return ws


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
    """A read-only and a full (1 MiB tmpfs) file system, where this machine lets the tests mount them."""
    root = tmp_path_factory.mktemp("mounts")
    ro, full = root / "ro", root / "full"
    (root / "ro_src").mkdir()
    ro.mkdir()
    full.mkdir()
    have = {}
    if _mount(["mount", "--bind", str(root / "ro_src"), str(ro)]):
        have["ro"] = _mount(["mount", "-o", "remount,bind,ro", str(ro)])
    if _mount(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)]):
        have["full"] = True
    yield {"ro": ro if have.get("ro") else None, "full": full if have.get("full") else None}
    for path in (ro, full):
        _mount(["umount", str(path)])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, workspace, mounts, tiny_testbed, cli, monkeypatch, tmp_path):
    from editscale import cache

    if case.needs in ("ro", "full") and mounts[case.needs] is None:
        pytest.skip(f"this machine does not let the tests mount a {case.needs} file system "
                    "(the probe cases check the same)")
    if case.needs == "nocuda" and _cuda_available():
        pytest.skip("this machine has a CUDA GPU")
    watched = [workspace, tiny_testbed, tmp_path]
    if case.patch.startswith("probe_"):  # the storage is checked before any model is loaded or built
        import editscale.names
        from editscale.testbed import registry

        def expensive(*args, **kwargs):
            raise AssertionError("a model was loaded or built before the storage was checked")

        monkeypatch.setattr(editscale.names, "load_model", expensive)
        monkeypatch.setattr(registry, "build", expensive)
    if case.patch == "probe_full_home":  # an empty cache on a full disk
        monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))
        case = Case(case.id, case.args, case.code, case.match, patch="probe_full")
    if case.patch == "home_file":
        (tmp_path / "home_file").write_text("not a folder")
        monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home_file"))
    if case.patch == "interval_abc":
        monkeypatch.setenv("EDITSCALE_PROGRESS_INTERVAL", "abc")
    if case.patch == "probe_rofs":
        def probe(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(cache.tempfile, "mkstemp", probe)
    elif case.patch == "probe_full":
        monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    elif case.patch == "home_truncated":  # a cache with a complete tiny testbed whose weights were cut short
        from editscale.testbed.registry import model_path

        home = tmp_path / "home"
        monkeypatch.setenv("EDITSCALE_HOME", str(home))
        entry = model_path("tiny")
        shutil.copytree(tiny_testbed, entry)
        cache.write_files_manifest(entry)
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    paths = {"ws": workspace, "tiny": tiny_testbed, "cache": cache.cache_root() if case.patch != "home_file" else "",
             "ro": mounts["ro"], "full": mounts["full"], "long_prompt": "{} " + "lives far away in " * 100}
    args = [a.format(**paths) for a in case.args]
    before = _snapshot(*watched, *(p for p in (mounts["ro"], mounts["full"]) if p is not None))
    code, _, err = cli(*args)
    after = _snapshot(*watched, *(p for p in (mounts["ro"], mounts["full"]) if p is not None))
    assert code == case.code, f"exit {code}, expected {case.code}; stderr: {err}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    if any(line.startswith("error:") for line in lines):
        assert len(lines) == 1, err  # the error line alone: no traceback, no progress before it
    assert case.match.lower() in err.lower(), err
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"files written or changed: {changed[:5]}"


def test_the_table_is_large():
    assert len(CASES) >= 50


# --- NaN or infinite weights after an edit ---------------------------------------------------------------------
class NanHparams(HparamsBase):
    layer: int | None = Field(None, ge=0)
    nan_subjects: list[str] = Field(default_factory=list)  # edits of these subjects write NaN into the matrix


@register
class NanEdit(EditMethod):
    """A stand-in method: a small rank-one update, or NaN for the subjects named."""

    name = "test-nan"
    Hparams = NanHparams

    def compute(self, ctx, requests, state):
        import torch

        hp = self.hparams
        w = ctx.anatomy.weight(ctx.model, hp.layer).detach()
        state["count"] = torch.tensor(int(state.get("count", torch.zeros(())).item()) + 1)
        value = float("nan") if any(r.request.subject in hp.nan_subjects for r in requests) else 1e-3
        left, right = torch.full((w.shape[0], 1), value), torch.ones(1, w.shape[1])
        name = ctx.anatomy.weight_name(hp.layer)
        return Delta({name: Update(name, ctx.anatomy.transposed, left=left, right=right)})


def test_an_edit_that_makes_nan_weights_is_refused_and_nothing_saved(workspace, tiny_testbed, cli, tmp_path):
    args = ["edit", "-m", str(tiny_testbed), "--method", "test-nan", "--set", "nan_subjects=[Alice]",
            "--prompt", "{} lives in", "--subject", "Alice", "--target", "Paris", "--save", str(tmp_path / "x")]
    code, _, err = cli(*args)
    last = err.splitlines()[-1]  # after the editing progress line, one error line
    assert code == 2 and last.startswith("error: test-nan produced NaN or infinite weights") and "Traceback" not in err
    assert not list(tmp_path.iterdir())
    code, _, err = cli("eval", "-m", str(tiny_testbed), "-d", str(workspace / "good.jsonl"), "--method",
                       "test-nan", "--set", "nan_subjects=[Person1]")
    assert code == 2 and "NaN or infinite weights" in err.splitlines()[-1] and "Traceback" not in err


def test_in_a_run_a_nan_edit_is_a_disabling_edit_rolled_back(workspace, tiny_testbed, tmp_path):
    """Recorded as flagged and refused (rule ``nonfinite``) and reverted although ``guard.revert`` is off; the
    method's state is rolled back too, and the run goes on with finite weights."""
    from editscale.data.readers import load_cases
    from editscale.experiment.config import sample_cases
    from editscale.experiment.runner import run_experiment
    from editscale.experiment.store import RunStore

    records = str(workspace / "good.jsonl")
    plan = sample_cases(load_cases(records), 5, seed=0)
    cfg = {"model": str(tiny_testbed), "data": records, "edits": 5, "seed": 0, "threads": 1,
           "method": {"name": "test-nan", "hparams": {"nan_subjects": [plan[2].request.subject]}},
           "metrics": ["efficacy"], "guard": {"entropy_prompts": 0, "probe_cases": 0}}
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary["edits"] == 5 and summary["flagged"] == [3] and summary["refused"] == [3]
    with RunStore.in_dir(tmp_path / "run") as store:
        assert store.rows("SELECT kind, rule FROM events ORDER BY id") == [("flagged", "nonfinite"),
                                                                         ("refused", "nonfinite")]
        assert store.rows("SELECT refused, efficacy FROM edits WHERE edit_idx = 3") == [(1, None)]
        frob = dict(store.rows("SELECT update_idx, frobenius FROM distances"))
        assert frob[3] == frob[2] and frob[4] > frob[3]  # reverted exactly, then editing went on


# --- report on read-only storage (part 7) -------------------------------------------------------------------
def test_report_reads_a_run_without_writing_beside_it(workspace, cli, tmp_path):
    run = workspace / "done"
    before = _snapshot(run)
    code, out, err = cli("report", str(run), "--out", str(tmp_path / "rep"), "--json")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and json.loads(out)["plots"]
    assert _snapshot(run) == before  # no -shm, -wal or report folder beside the database


def test_report_of_a_run_on_read_only_storage(workspace, mounts, cli, tmp_path):
    if mounts["ro"] is None:
        pytest.skip("this machine does not let the tests mount a read-only file system")
    src = mounts["ro"].parent / "ro_src"
    shutil.copytree(workspace / "done", src / "done")
    run = mounts["ro"] / "done"
    code, _, err = cli("report", str(run))  # the default place is beside the run: refused, before any work
    assert code == 2 and "read-only" in err and "give --out" in err
    code, out, err = cli("report", str(run), "--out", str(tmp_path / "rep"), "--json")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file()
    code, out, err = cli("run", "--resume", str(run), "--json")  # a complete run: its summary, read only
    assert code == 0 and json.loads(out)["edits"] == 2
