"""Where AlphaEdit's "null space of preserved knowledge" lies against the keys that matter on a testbed model.

    python bench/bench_nullspace.py [--model testbed:demo] [--thresholds 0.02,0.05,0.1] [--n 200]

AlphaEdit projects each update onto P = U U^T, U the eigenvectors of the edited layer's key second moment C
(estimated on the model's generic corpus, as the run's statistics) whose eigenvalues fall below a threshold;
keys with little energy in P are left (nearly) untouched by every update. For each threshold: the number of
directions P keeps, and the share of the squared norm in P of the keys at the edited layer (every token) of
(a) the corpus texts C was estimated on, (b) the four skills' few-shot prompts, (c) the fact sentences'
subjects' last tokens (the keys edits write to). A share near 0 for (b) protects the skills; a large one means
the updates can reach them.
"""

from __future__ import annotations

import argparse
import os

import torch

os.environ.setdefault("EDITSCALE_PROGRESS", "0")


def keys_of(model, tok, module: torch.nn.Module, texts: list[str], last_of: list[str] | None = None) -> torch.Tensor:
    """The inputs of ``module`` (the edited matrix) for every token of each text, or only at the last token of
    the given substring of each text."""
    got: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, args, _out: got.append(args[0].detach()))
    out = []
    try:
        with torch.no_grad():
            for i, text in enumerate(texts):
                got.clear()
                enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
                model(**enc)
                k = got[0][0]
                if last_of is None:
                    out.append(k)
                else:
                    end = text.index(last_of[i]) + len(last_of[i])
                    pos = len(tok(text[:end])["input_ids"]) - 1
                    out.append(k[pos:pos + 1])
    finally:
        hook.remove()
    return torch.cat(out).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="testbed:demo")
    ap.add_argument("--thresholds", default="0.02,0.05,0.1")
    ap.add_argument("--n", type=int, default=200, help="texts of each kind")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corpus", default=None, help="estimate C on this corpus instead of the model's corpus.txt "
                    "(e.g. bench/preserved_corpus.py's, which adds the skills' training texts)")
    args = ap.parse_args()

    from pathlib import Path

    from editscale.data.downstream import skill_tasks
    from editscale.methods.context import EditContext, null_space_projector
    from editscale.methods.hparams import AlphaEditHparams
    from editscale.methods.preset_resolution import preset_values
    from editscale.names import load_cases, load_model, resolve_model_path

    torch.set_num_threads(args.threads)
    model, tok, anatomy = load_model(args.model)
    model_dir = Path(resolve_model_path(args.model))
    hp = AlphaEditHparams.validated({**preset_values("testbed", "alphaedit"),
                                     **({"mom2_corpus": args.corpus} if args.corpus else {})})
    layer = (hp.layers or [0])[0]
    ctx = EditContext(model, tok, stats_cache="default")
    cov = ctx.second_moments([layer], hp)[layer]
    module = model.get_submodule(anatomy.mlp_out_name(layer))

    corpus = [t for t in (model_dir / "corpus.txt").read_text().splitlines() if t.strip()][: args.n]
    prompts = [task.prompt(ex) for task in skill_tasks(model_dir, n=args.n // 4) for ex in task.examples[: args.n // 4]]
    cases = load_cases(args.model, limit=args.n)
    facts = [c.request.prompt.format(c.request.subject) for c in cases]
    kinds = {"corpus texts (every token)": keys_of(model, tok, module, corpus),
             "skill prompts (every token)": keys_of(model, tok, module, prompts),
             "fact subjects (last token)": keys_of(model, tok, module, facts, [c.request.subject for c in cases])}
    print(f"{args.model}, layer {layer} ({anatomy.mlp_out_name(layer)}), key width {cov.shape[0]}; C from the "
          f"run statistics ({hp.mom2_n_tokens} key vectors of {args.corpus or 'corpus.txt'}); {args.threads} thread(s)")
    print(f"{'threshold':>10}{'directions':>12}" + "".join(f"{k:>30}" for k in kinds))
    for th in (float(x) for x in args.thresholds.split(",")):
        p = null_space_projector(cov, th)
        shares = [float(((k @ p) * k).sum() / (k * k).sum()) for k in kinds.values()]
        print(f"{th:>10g}{round(float(p.trace())):>12}" + "".join(f"{s:>30.3%}" for s in shares))


if __name__ == "__main__":
    main()
