"""No deprecation warning from editscale's own calls (issue 16 part 3): the main commands on testbed:tiny, with
every FutureWarning and DeprecationWarning (transformers', torch's, anyone's) turned into an error. A warning
raised here is fixed at the call that causes it (``editscale.model.compat`` bridges the transformers versions),
never silenced."""

from __future__ import annotations

import json
import warnings

import pytest

pytestmark = [pytest.mark.filterwarnings("error::FutureWarning"),
              pytest.mark.filterwarnings("error::DeprecationWarning")]


def _ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    assert "Warning" not in err, err
    return out


def test_main_commands_on_the_tiny_testbed(tiny_testbed, cli, tmp_path):
    warnings.simplefilter("error", FutureWarning)
    warnings.simplefilter("error", DeprecationWarning)
    prompt = ["--prompt", "{} lives in", "--subject", "Alice", "--target", "Paris"]
    _ok(cli("testbed", "build", "tiny", "--json"))
    _ok(cli("edit", "-m", "testbed:tiny", "--method", "rome", *prompt, "--save", str(tmp_path / "edited"), "--json"))
    _ok(cli("edit", "-m", "testbed:tiny", "--method", "memit", "-d", "testbed:tiny", "--limit", "2", "--json"))
    _ok(cli("eval", "-m", "testbed:tiny", "-d", "testbed:tiny", "--limit", "4", "--json"))
    _ok(cli("eval", "-m", "testbed:tiny", "-d", "testbed:tiny", "--limit", "2", "--method", "r-rome", "--json"))
    _ok(cli("downstream", "-m", "testbed:tiny", "--tasks", "skills", "--n", "8", "--json"))
    config = tmp_path / "run.yaml"
    config.write_text("model: testbed:tiny\nmethod: rome\ndata: testbed:tiny\nedits: 3\nforget_every: 2\n"
                      "downstream_every: 2\ndownstream_n: 8\nthreads: 1\n")
    summary = json.loads(_ok(cli("run", str(config), "--out", str(tmp_path / "run"), "--json")))
    assert summary["edits"] == 3 and summary["threads"] == 1
    _ok(cli("report", str(tmp_path / "run"), "--json"))
    _ok(cli("trace", "-m", "testbed:tiny", "-d", "testbed:tiny", "--n", "2", "--samples", "2", "--kinds", "hidden",
            "--single", "0", "--out", str(tmp_path / "trace"), "--json"))
    _ok(cli("cache", "list", "--json"))
    _ok(cli("models", "--json"))
