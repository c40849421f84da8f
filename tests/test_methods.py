"""Editing methods on tiny random models: Deltas that leave the model untouched and revert bit-exactly, the
algebra of ROME and MEMIT (property tests), the batched target optimisation, prefixes and hyperparameters."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from edit_helpers import METHODS, cases, corpus, editor, requests, saved_model, small
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, bpe_tokenizer, random_model

from editscale.errors import ConfigError
from editscale.methods.base import get_method_class, method_names
from editscale.methods.context import EditContext
from editscale.methods.hparams import (
    FtHparams,
    MemitHparams,
    RomeHparams,
)
from editscale.methods.memit import memit_solve
from editscale.methods.prefixes import PrefixSpec
from editscale.methods.preset_resolution import default_layers, model_kind, resolve_hparams
from editscale.methods.rome import rank_one_solve
from editscale.methods.targets import (
    as_items,
    build_layout,
    optimize_targets,
    split_at_vectors,
    subject_activations,
)
from editscale.model.anatomy import get_anatomy
from editscale.model.hooks import add_at

warnings.filterwarnings("ignore", message=".*matrix is singular.*")


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def texts():
    return corpus(80)


def test_builtin_methods_are_registered():
    assert set(METHODS) <= set(method_names())
    assert get_method_class("r-rome").name == "r-rome"


def test_methods_declare_themselves_and_the_catalog_reads_it_without_torch():
    """Each built-in method declares its own description and paper, what it prepares and its default layers;
    the catalog (the CLI's help, which must not import torch) reads the same names and descriptions from the
    source; the declarations drive presets, default layers and preparation."""
    import subprocess
    import sys

    from editscale.methods.base import NEEDS, default_method
    from editscale.methods.catalog import declared

    builtin = {d.name: d for d in declared()}
    assert set(METHODS) | {"mend"} <= set(builtin)
    for name, d in builtin.items():
        cls = get_method_class(name)
        assert cls.__module__ == d.module and d.description == cls.description
        assert cls.__dict__.get("description") and cls.__dict__.get("paper"), name  # its own, not inherited
        assert set(cls.needs) <= set(NEEDS) and cls.layer_rule.describe()
    assert default_method() == "memit"
    assert get_method_class("r-rome").preset_sections() == ("rome", "r-rome")
    assert get_method_class("alphaedit").needs[-1] == "projectors" and get_method_class("ft-l").needs == ()
    code = ("import sys; from editscale.methods.catalog import method_help; import editscale.cli; "
            "print(method_help('x')); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in builtin)


def test_no_method_name_is_spelt_outside_its_module():
    """Principle 10: what differs between methods is declared by the method, so its name appears as a string
    only in its own module (and the preset files), not in the code that resolves, prepares or lists methods."""
    import ast
    from pathlib import Path

    import editscale
    from editscale.methods.catalog import declared

    root = Path(editscale.__file__).parent
    names = {d.name: ".".join(d.module.split(".")[:3]) for d in declared()}  # its module, or its package
    allowed = {
        "demo.py",  # the demo's choice of methods to run
        "cli/edit.py",  # --method's default, printed in the result (the Editor's default is declared)
        "cli/scaling.py",  # --methods' default: the MEMIT paper's Figure 5 comparison
        "cli/mend.py",  # the `editscale mend` command group
        "cache_entries.py",  # MEND's cache folder, spelt out so that listing the cache imports no torch
    }
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        module = "editscale." + rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        if rel in allowed:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
                continue
            for part in node.value.split(","):  # also in a comma-separated list, e.g. an option's default
                if part.strip() in names and not module.startswith(names[part.strip()]):
                    found.append(f"{rel}:{node.lineno}: {node.value!r}")
                    break
    assert not found, found


def test_the_methods_command_lists_the_declarations(cli):
    code, out, _ = cli("methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(METHODS) <= set(rows)
    assert rows["memit"]["default"] and not rows["alphaedit"]["default"]
    assert rows["mend"]["needs"] == ["editor"] and "last 3 blocks" in rows["mend"]["default_layers"]
    assert rows["r-rome"]["preset_sections"] == ["rome", "r-rome"]
    code, out, _ = cli("methods")
    assert code == 0 and "Mass-Editing Memory" in out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_edits_every_family_as_a_delta(family, method, tok, texts):
    model = random_model(family, vocab_size=len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = editor(model, tok, method, texts)
    delta = ed.compute(requests()[:2])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "compute() changed the model"
    assert not any(p.grad is not None for p in model.parameters())
    assert delta.updates and all(u.norm() > 0 and torch.isfinite(u.matrix()).all() for u in delta.updates.values())
    delta.apply(model)
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed == set(delta.updates)
    delta.revert(model)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


# --- algebra ------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 12), k=st.integers(2, 16))
def test_rank_one_solve_inserts_the_key_value_pair(seed, d, k):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(k, dtype=torch.float64)
    k_star, k_bare, v = (torch.randn(n, generator=g, dtype=torch.float64) for n in (k, k, d))
    for key in (k_star, k_bare):
        lam, u = rank_one_solve(lambda x: torch.linalg.solve(cov, x), k_star, key, v, w @ key)
        torch.testing.assert_close((w + torch.outer(lam, u)) @ key, v)
        # u is C^-1 k*, normalised
        torch.testing.assert_close(u, torch.linalg.solve(cov, k_star) / torch.linalg.solve(cov, k_star).norm())


@settings(max_examples=30, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), d=st.integers(2, 10), k=st.integers(2, 12),
       weight=st.floats(1e-2, 1e4))
def test_memit_solve_satisfies_its_normal_equations(seed, n, d, k, weight):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, k, generator=g)
    resid = torch.randn(n, d, generator=g)
    a = torch.randn(k, k, generator=g)
    cov = a @ a.T / k + 0.05 * torch.eye(k)
    left, right = memit_solve(keys, resid, cov, weight)
    delta = left @ right
    lhs = delta @ (weight * cov.double() + keys.double().T @ keys.double())
    torch.testing.assert_close(lhs, resid.double().T @ keys.double(), rtol=1e-6, atol=1e-6 * (1 + weight))


# --- ROME and r-ROME on models: W' k = v* ---------------------------------------------------------------
def _outputs_after(model, tok, ctx, method_name, item, r1):
    hp = RomeHparams.validated({**small("rome"), "layer": 1})
    module = ctx.anatomy.mlp_out_name(1)
    reads = subject_activations(ctx, [item], ctx.prefixes(PrefixSpec.from_hparams(hp)), [(module, False)],
                                average=hp.key_average, stop_after=module)
    return reads[(module, False)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@settings(max_examples=4, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), target=st.sampled_from(["football", "French", "the lazy dog"]))
def test_after_rome_the_edited_matrix_maps_the_key_to_v_star(family, which, target, tok, texts):
    model = random_model(family, vocab_size=len(tok))
    req = requests()[which]
    req = type(req)(req.prompt, req.subject, target, case_id=req.case_id)
    for name in ("rome", "r-rome"):
        ed = editor(model, tok, name, texts, layer=1)
        r1 = ed.method.rank_one(ed.context, req)
        delta = ed.compute([req]).apply(model)
        try:
            out = _outputs_after(model, tok, ed.context, name, as_items([req])[0], r1)
        finally:
            delta.revert(model)
        # ROME: W' k + b = v* for the bare prompt's key; r-ROME: for the prefix-averaged key k*
        got = out.mean[0] if name == "r-rome" else out.bare[0]
        torch.testing.assert_close(got.double(), r1.value.double(), rtol=1e-3, atol=1e-3 * float(r1.value.norm()))
        if name == "rome":
            assert not torch.equal(r1.key, r1.key_mean)  # the asymmetry Gupta et al. found


def test_rome_with_several_requests_is_sequential_rank_n(tok, texts):
    model = random_model("gpt2", vocab_size=len(tok))
    ed = editor(model, tok, "rome", texts, layer=1)
    delta = ed.compute(requests())
    (upd,) = delta.updates.values()
    assert upd.rank == 3


def test_memit_moves_the_last_layer_output_towards_z(tok, texts):
    model = random_model("gpt2", vocab_size=len(tok), layers=3)
    ed = editor(model, tok, "memit", texts, layers=[0, 1], mom2_update_weight=1.0, v_steps=10)
    ctx, hp = ed.context, ed.hparams
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    z_module = ctx.anatomy.layer_name(1)
    reqs = requests()
    z = optimize_targets(ctx, reqs, z_module, hp, prefixes).target

    def h():
        return subject_activations(ctx, reqs, prefixes, [(z_module, False)])[(z_module, False)].bare.float()

    before = (z - h()).norm(dim=1)
    delta = ed.compute(reqs).apply(model)
    after = (z - h()).norm(dim=1)
    delta.revert(model)
    assert (after < 0.5 * before).all()
    assert all(u.rank == 3 for u in delta.updates.values())  # low rank: one per request


# --- the batched target optimisation -----------------------------------------------------------------------
def test_batched_targets_equal_one_at_a_time_with_early_stopping(tok, texts):
    model = random_model("gptj", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    hp = MemitHparams.validated({**small("memit"), "layers": [1], "v_steps": 12, "v_weight_decay": 0,
                                "kl_factor": 0})
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    module = ctx.anatomy.layer_name(1)
    reqs = requests()
    free = optimize_targets(ctx, reqs, module, hp, prefixes)
    # a threshold between the requests' losses: some stop early, others run on
    hp = hp.updated(v_early_stop=float(free.loss.median()))
    batched = optimize_targets(ctx, reqs, module, hp, prefixes)
    alone = [optimize_targets(ctx, [r], module, hp, prefixes) for r in reqs]
    steps = [int(a.steps[0]) for a in alone]
    assert min(steps) < max(steps)
    assert batched.steps.tolist() == steps
    for i, a in enumerate(alone):
        torch.testing.assert_close(batched.target[i], a.target[0], rtol=1e-3, atol=1e-3)
    # chunking requests changes nothing either
    chunked = optimize_targets(ctx, reqs, module, hp.updated(target_batch=2), prefixes)
    torch.testing.assert_close(chunked.target, batched.target, rtol=1e-3, atol=1e-3)


def test_delta_is_clamped(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    hp = RomeHparams.validated({**small("rome"), "clamp_norm_factor": 0.05, "v_steps": 8, "v_weight_decay": 0})
    module = ctx.anatomy.mlp_out_name(1)
    res = optimize_targets(ctx, requests(), module, hp, ctx.prefixes(PrefixSpec.from_hparams(hp)))
    assert (res.delta.norm(dim=1) <= 0.05 * res.init.norm(dim=1) * (1 + 1e-4)).all()


def test_other_facts_of_the_subject_enter_the_kl_term(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    with_facts = build_layout(ctx, as_items(cases()), [[""]], kl_prompt="{} is a", other_facts=True)
    without = build_layout(ctx, as_items(requests()), [[""]], kl_prompt="{} is a", other_facts=True)
    assert len(with_facts.kl_row) == 2 * len(without.kl_row) == 6
    # the other fact is compared where its object is predicted: the prompt's last token
    last = with_facts.batch.lengths[with_facts.kl_row] - 1
    assert torch.equal(with_facts.kl_col[1::2], last[1::2])


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_prefix_forward_equals_the_full_forward(tok, family):
    """The target optimisation runs each prompt's prefix once and then only the columns from the vector's
    position on; with a vector added there, its hidden states must be those of the full forward pass."""
    model = random_model(family, vocab_size=len(tok))
    ctx = EditContext(model, tok, stats_cache=None)
    prefixes = ctx.prefixes(PrefixSpec(((4, 2), (7, 2))))
    full = build_layout(ctx, as_items(cases()), prefixes, kl_prompt="{} is a", other_facts=True)
    split = split_at_vectors(full, tok.pad_token_id)
    assert len(set(full.pos.tolist())) > 1  # rows really are shifted by different amounts
    module = ctx.anatomy.mlp_out_name(1)
    vectors = torch.randn(len(full.pos), model.config.hidden_size)
    rows = torch.arange(len(full.pos))
    with add_at(model, module, full.pos, vectors), torch.no_grad():
        ref = model.base_model(**full.inputs(rows)).last_hidden_state
    kv = split.prefix_cache(model)
    with add_at(model, module, split.pos, vectors), torch.no_grad():
        inputs = split.inputs(rows, split.cache(model, kv, rows), model=model.base_model)
        got = model.base_model(**inputs).last_hidden_state
    assert torch.allclose(got[split.tok_row, split.tok_col], ref[full.tok_row, full.tok_col], atol=1e-5)
    assert torch.allclose(got[split.kl_row, split.kl_col], ref[full.kl_row, full.kl_col], atol=1e-5)
    assert torch.isfinite(got[split.batch.attention_mask.bool()]).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("where", ["mlp_out", "layer"])
def test_replaying_the_layers_below_the_vector_changes_no_target(tok, family, where, monkeypatch):
    """The layers below the one holding the vector run once and are replayed at every step; the targets must
    be those of the plain loop that runs every layer at every step (with early stopping, so that requests
    leave the batch and the replayed rows are a subset)."""
    from editscale.methods import targets

    model = random_model(family, vocab_size=len(tok), layers=4)
    ctx = EditContext(model, tok, stats_cache=None)
    hp = MemitHparams.validated({**small("memit"), "v_steps": 10, "v_weight_decay": 0, "clamp_norm_factor": 100,
                                 "v_early_stop": 0})
    module = ctx.anatomy.mlp_out_name(2) if where == "mlp_out" else ctx.anatomy.layer_name(2)
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    # a threshold between the median request's losses after 3 and 4 steps: the others stop at once or never
    at3, at4 = (optimize_targets(ctx, cases(), module, hp.updated(v_steps=n), prefixes).loss for n in (4, 5))
    mid = int(at3.argsort()[1])
    hp = hp.updated(v_early_stop=float(at3[mid] + at4[mid]) / 2)
    fast = optimize_targets(ctx, cases(), module, hp, prefixes)
    assert targets._layer_index(ctx.anatomy.layers, module) == 2
    monkeypatch.setattr(targets, "_layer_index", lambda layers, name: 0)  # nothing replayed
    plain = optimize_targets(ctx, cases(), module, hp, prefixes)
    assert len(set(plain.steps.tolist())) > 1
    assert fast.steps.tolist() == plain.steps.tolist()
    torch.testing.assert_close(fast.target, plain.target, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-5, atol=1e-5)


def test_argmax_early_stop_leaves_the_target_the_argmax_in_every_prompt(tiny_testbed):
    """v_stop_on="argmax": a request stops at the first step where each new-target token is the argmax in all
    its prompts (on the trained tiny testbed: random models barely move their predictions)."""
    import json

    from editscale.data.records import EditCase
    from editscale.model.loading import load_model

    model, tok, _ = load_model(str(tiny_testbed))
    lines = (tiny_testbed / "world.jsonl").read_text().splitlines()[:3]
    reqs = [EditCase.from_dict(json.loads(line)).request for line in lines]
    ctx = EditContext(model, tok, stats_cache=None)
    hp = RomeHparams.validated({"context_lengths": [(3, 2), (5, 2)], "v_steps": 40, "v_stop_on": "argmax"})
    module = ctx.anatomy.mlp_out_name(0)
    prefixes = ctx.prefixes(PrefixSpec.from_hparams(hp))
    res = optimize_targets(ctx, reqs, module, hp, prefixes)
    assert (res.steps < hp.v_steps - 1).all() and int(res.steps.max()) >= 1
    lay = build_layout(ctx, as_items(reqs), prefixes)

    def all_argmax(delta: torch.Tensor) -> bool:
        with add_at(model, module, lay.pos, delta[lay.owner]), torch.no_grad():
            logits = model(**lay.inputs(torch.arange(len(lay.pos)))).logits
        return torch.equal(logits[lay.tok_row, lay.tok_col].argmax(-1), lay.tok_id)

    assert all_argmax(res.delta)
    # one step fewer, the slowest request still misses somewhere
    assert not all_argmax(optimize_targets(ctx, reqs, module, hp.updated(v_steps=int(res.steps.max())),
                                           prefixes).delta)


def test_prefixes_are_deterministic_per_seed_and_cached(tok):
    model = random_model("gpt2", vocab_size=len(tok))
    spec = PrefixSpec(((5, 3), (8, 2)))
    a = EditContext(model, tok, stats_cache=None, seed=1)
    b = EditContext(model, tok, stats_cache=None, seed=1)
    c = EditContext(model, tok, stats_cache=None, seed=2)
    pa = a.prefixes(spec)
    assert pa[0] == [""] and [len(g) for g in pa] == [1, 3, 2]
    assert all(p.endswith(". ") for g in pa[1:] for p in g)
    assert pa == b.prefixes(spec) and pa != c.prefixes(spec)
    assert a.prefixes(spec) is pa
    starts = a.prefixes(PrefixSpec(((6, 4),), ("The", "Because")))
    assert len(starts[1]) == 4 and all(p.startswith(("The", "Because")) for p in starts[1])


def test_ft_l_respects_its_bound_and_ft_w_does_not_need_one(tok, texts):
    model = random_model("gpt2", vocab_size=len(tok))
    eps = 1e-3
    d = editor(model, tok, "ft-l", texts, norm_constraint=eps, lr=1e-2).compute(requests())
    (u,) = d.updates.values()
    assert u.dense is not None and float(u.matrix().abs().max()) <= eps * (1 + 1e-6)
    d = editor(model, tok, "ft-w", texts, lr=1e-2, scope="matrix").compute(requests())
    (u,) = d.updates.values()
    assert float(u.matrix().abs().max()) > eps


# --- hyperparameters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, field", [
    ({"v_lr": -1}, "v_lr"),
    ({"layers": "five"}, "layers"),
    ({"layer": "five"}, "layers.0"),  # the former name reads as layers: [five]
    ({"no_such_field": 1}, "no_such_field"),
    ({"kl_prompt": "is a"}, "kl_prompt"),
    ({"mom2_dtype": "float8"}, "mom2_dtype"),
])
def test_bad_hparams_are_one_line_errors_naming_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        RomeHparams.validated(data)
    assert f"'{field}'" in str(e.value) and "\n" not in str(e.value)


def test_layers_is_the_one_name_and_layer_its_former_alias():
    """``layers: [N]`` for every method; ``layer: N`` (existing configs and run files) reads as ``layers: [N]``;
    a one-layer method refuses two; the presets use ``layers`` only."""
    from importlib import resources

    assert RomeHparams.validated({"layer": 3}).layers == [3] == FtHparams.validated({"layer": 3}).layers
    assert RomeHparams.validated({"layer": None, "layers": [2]}).layers == [2]
    assert MemitHparams.validated({"layer": 4}).layers == [4]
    with pytest.raises(ConfigError, match="edits 1 layer"):
        RomeHparams.validated({"layers": [1, 2]})
    with pytest.raises(ConfigError, match="layer is its former name"):
        FtHparams.validated({"layer": 1, "layers": [2]})
    for entry in resources.files("editscale.methods").joinpath("presets").iterdir():
        assert "\n  layer:" not in entry.read_text(), entry.name


def test_bad_memit_layers_and_yaml(tmp_path, tok):
    for layers in ([], [2, 2], [-1]):
        with pytest.raises(ConfigError, match="'layers'"):
            MemitHparams.validated({"layers": layers})
    f = tmp_path / "hp.yaml"
    f.write_text("layers: [1, 0]\nmom2_update_weight: 100\n")
    assert MemitHparams.from_yaml(f).layers == [0, 1]
    f.write_text("layers: [1, 0\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        MemitHparams.from_yaml(f)
    model = random_model("gpt2", vocab_size=len(tok))
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        resolve_hparams("rome", RomeHparams, model, get_anatomy(model), {"layer": 7})
    f.write_text("method: memit\nlayer: 1\n")
    with pytest.raises(ConfigError, match="for method 'memit'"):
        resolve_hparams("rome", RomeHparams, model, get_anatomy(model), f)


def test_presets_and_default_layers(tmp_path):
    def fake(model_type, n_layer, width):
        return SimpleNamespace(config=SimpleNamespace(model_type=model_type, n_layer=n_layer, n_embd=width))

    assert model_kind(fake("gpt2", 48, 1600)) == "gpt2-xl"
    assert model_kind(fake("gptj", 28, 4096)) == "gpt-j-6b"
    assert model_kind(fake("gpt2", 3, 32)) == "generic"
    assert default_layers("rome", 28) == [5] and default_layers("memit", 28) == [3, 4, 5, 6, 7, 8]
    assert default_layers("memit", 48)[-1] - default_layers("memit", 48)[0] >= 4
    assert default_layers("rome", 4, {"rome_layer": 2}) == [2]
    assert default_layers("memit", 4, {"memit_layers": [1, 0]}) == [0, 1]
    d = saved_model(tmp_path / "m", manifest={"rome_layer": 1, "memit_layers": [0, 1]})
    from editscale.model.loading import load_model

    model, _tok, anatomy = load_model(str(d))
    assert resolve_hparams("rome", RomeHparams, model, anatomy).layers == [1]
    assert resolve_hparams("ft-l", FtHparams, model, anatomy).layers == [1]
    assert resolve_hparams("memit", MemitHparams, model, anatomy).layers == [0, 1]
    assert resolve_hparams("memit", MemitHparams, model, anatomy, {"layers": [0]}).layers == [0]


def test_presets_are_data_files_found_by_the_model_config():
    """One YAML per model kind: matched by model_type / layers / width (the most specific wins), every value
    valid for its method's Hparams and given with its reason in a comment, no module names (the anatomy's)."""
    from importlib import resources

    from editscale.methods.preset_resolution import preset_values, presets
    from editscale.model.anatomy import FAMILIES as ANATOMIES

    def fake(model_type, n_layer, width):
        return SimpleNamespace(config=SimpleNamespace(model_type=model_type, n_layer=n_layer, n_embd=width))

    assert {"gpt2-xl", "gpt-j-6b", "gpt-neox-20b", "llama", "smollm2", "testbed"} <= set(presets())
    assert model_kind(fake("llama", 30, 576)) == "smollm2"  # SmolLM2-135M, not the generic Llama preset
    assert model_kind(fake("llama", 32, 4096)) == model_kind(fake("mistral", 32, 4096)) == "llama"
    assert model_kind(fake("llama", 4, 64)) == "generic"
    assert model_kind(fake("gpt2", 3, 32), manifest={"rome_layer": 1}) == "testbed"
    # r-ROME takes ROME's section, then its own
    assert preset_values("smollm2", "r-rome") == {**preset_values("smollm2", "rome"), "v_stop_on": "loss"}
    assert preset_values("llama", "r-rome") == preset_values("llama", "rome")
    # smollm2.yaml starts from llama.yaml (base: llama): what it does not set is Llama's, what it sets wins
    assert preset_values("smollm2", "encore")["v_argmax_hits"] == preset_values("llama", "encore")["v_argmax_hits"]
    assert preset_values("llama", "alphaedit")["v_lr"] == 0.1 and preset_values("smollm2", "alphaedit")["v_lr"] == 0.5
    assert preset_values("smollm2", "rome")["v_steps"] == preset_values("llama", "rome")["v_steps"]
    assert preset_values("smollm2", "rome")["mom2_n_tokens"] == 15360
    classes = {m: get_method_class(m).Hparams for m in method_names()}
    names = {n for a in ANATOMIES.values() for n in (a.mlp_out, a.mlp_in, a.layers, a.final_norm)}
    for name, preset in presets().items():
        for method, values in preset.methods.items():
            if method == "shared":  # values for every method that has the field: each field some method's
                assert all(any(k in c.model_fields for c in classes.values()) for k in values), name
                continue
            classes[method].validated(values)  # a ConfigError naming the field otherwise
        text = resources.files("editscale.methods").joinpath("presets", f"{name}.yaml").read_text()
        assert not any(n in text for n in names), name
        for line in text.splitlines():
            if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
                assert "#" in line or line.split(":", 1)[0].strip() in ("model_type", "layers", "width",
                                                                       "min_layers", "testbed_manifest"), line
    # the testbed's statistics keep editscale's former meaning: 20,000 key vectors in corpus order
    tb = RomeHparams.validated(preset_values("testbed", "rome"))
    assert (tb.mom2_n_tokens, tb.mom2_n_texts, tb.mom2_sampling) == (20_000, None, "in_order")


@pytest.mark.parametrize("method", ["rome", "memit", "ft-l"])
def test_bfloat16_models_are_edited_with_float32_statistics(method, tok, texts):
    model = random_model("llama", vocab_size=len(tok)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = editor(model, tok, method, texts)
    delta = ed.edit(requests()[:2])
    assert all(torch.isfinite(u.matrix()).all() and u.matrix().dtype == torch.float32 for u in delta.updates.values())
    if method != "ft-l":
        layers = ed.hparams.layers
        assert all(c.dtype == torch.float32 for c in ed.context.second_moments(layers, ed.hparams).values())
    delta.revert(model)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_a_presets_shared_section_reaches_every_method_that_has_the_field():
    from editscale.methods.preset_resolution import preset_values

    for method in ("rome", "r-rome", "memit", "emmet", "alphaedit", "encore"):
        values = preset_values("testbed", method)
        assert (values["mom2_n_tokens"], values["mom2_sampling"], values["v_steps"]) == (20_000, "in_order", 60)
    assert preset_values("testbed", "encore")["v_stop_on"] == "argmax"  # its own section overrides shared
    assert preset_values("testbed", "memit")["v_stop_on"] == "nll"
    assert "mom2_n_tokens" not in preset_values("testbed", "ft-l")  # FT has no statistics: shared skips it


def test_through_post_norm_moves_the_normed_output_by_the_residual():
    """Gemma 3 norms the MLP output before the residual add: the MLP-output change MEMIT writes must be the one
    whose normed image moves by the residual, not the residual itself."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from editscale.methods.memit import through_post_norm

    torch.manual_seed(0)
    norm = Gemma3RMSNorm(256)
    with torch.no_grad():  # gains 1 + w around 2.5 as Gemma 3 270M's (a few near 0), and one exactly 0
        norm.weight.normal_(1.5, 1.0)
        norm.weight[0] = -1.0
    m = 40 * torch.randn(5, 256)  # an MLP output far larger than its gain, as in Gemma 3
    r = 0.05 * torch.randn(5, 256)
    delta = through_post_norm(norm, m, r)
    assert torch.isfinite(delta).all()
    err = (norm(m + delta) - norm(m) - r).norm()
    naive = (norm(m + r) - norm(m) - r).norm()  # writing the residual itself as the MLP-output change
    assert err < 0.15 * r.norm() and naive > 0.5 * r.norm(), (float(err), float(naive))


def test_memit_family_on_a_post_norm_model_writes_through_the_norm(tok, texts):
    """On a Gemma 3 layout the MEMIT loop reads the MLP outputs and edits as on the other families."""
    model = random_model("gemma3_text", vocab_size=len(tok))
    assert get_anatomy(model).mlp_post_norm_name(1) == "model.layers.1.post_feedforward_layernorm"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("memit", "encore", "alphaedit", "emmet"):
        delta = editor(model, tok, method, texts).compute(requests()[:2])
        assert delta.updates and all(torch.isfinite(u.matrix()).all() for u in delta.updates.values())
        assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
