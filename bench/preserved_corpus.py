"""A statistics corpus that holds what must be preserved: a testbed model's generic corpus plus its skills' texts.

    python bench/preserved_corpus.py [--model testbed:demo] [--skill-texts 600] --out FILE

AlphaEdit's null space (and every method's preserved second moment C) is estimated on the model's generic
corpus (``corpus.txt``), which holds no skill prompt: on testbed:demo a fifth of the skill prompts' key energy
lies in AlphaEdit's "null space" (``bench/bench_nullspace.py``), so its updates reach the skills. This writes
``corpus.txt`` followed by ``--skill-texts`` few-shot skill texts from the training half of the testbed's skill
generator (the texts the model was trained on, never the evaluation pool), for ``mom2_corpus: FILE``. A corpus is
one text per line, so each text's line breaks become spaces (the evaluation prompts keep theirs). The skill
texts are spread evenly among the generic ones, so that both random sampling and the testbed preset's
``in_order`` sampling (the corpus's first texts) draw them in proportion to their number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editscale.testbed.specs import TestbedSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="testbed:demo", help="a testbed model (name or directory)")
    ap.add_argument("--skill-texts", type=int, default=600, help="skill texts appended (the four in turn)")
    ap.add_argument("--out", required=True, help="the corpus file to write")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from editscale.data.world import build_world
    from editscale.names import resolve_model_path
    from editscale.testbed.skills import SKILL_NAMES, SkillGenerator

    model_dir = Path(resolve_model_path(args.model))
    meta = json.loads((model_dir / "editscale_testbed.json").read_text())
    spec = TestbedSpec(**meta["spec"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    world = build_world(spec.n_subjects, spec.n_relations, spec.seed, n_skill_entities=spec.n_skill_entities,
                        n_background_names=spec.n_background_names, tokenize=tok.tokenize)
    skills = SkillGenerator(world, spec.seed, "train")
    texts = [skills.training_text(SKILL_NAMES[i % len(SKILL_NAMES)])[0] for i in range(args.skill_texts)]
    generic = (model_dir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    generic = [ln for ln in generic if ln.strip()]
    flat = [" ".join(t.split()) for t in texts]
    # skill text j goes after generic text round((j + 1) * len(generic) / (len(flat) + 1)): evenly spread
    after = {round((j + 1) * len(generic) / (len(flat) + 1)): j for j in range(len(flat))}
    lines = []
    for i, line in enumerate(generic, start=1):
        lines.append(line)
        if i in after:
            lines.append(flat[after[i]])
    lines += [flat[j] for j in range(len(flat)) if j not in after.values()]
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{out}: {len(generic)} generic texts + {len(texts)} skill texts "
          f"({sum(len(t) for t in texts) / max(1, sum(len(g) for g in generic)):.0%} of the generic characters)")


if __name__ == "__main__":
    main()
