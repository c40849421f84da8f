"""A statistics corpus that holds what must be preserved: a testbed model's generic corpus plus its skills' texts.

AlphaEdit's null space (and every method's preserved second moment C) is estimated on the model's generic
corpus (``corpus.txt``), which holds no skill prompt: on testbed:demo a fifth of the skill prompts' key energy
lies in AlphaEdit's "null space", so its updates reach the skills. ``preserved_corpus`` returns ``corpus.txt``'s
texts with ``n_skill_texts`` few-shot skill texts from the training half of the testbed's skill generator (texts
the model was trained on, never the evaluation pool), for ``mom2_corpus: FILE``
(``editscale testbed corpus NAME --out FILE``). A corpus is one text per line, so each skill text's line breaks
become spaces. The skill texts are spread evenly among the generic ones, so that both random sampling and the
``in_order`` sampling (the corpus's first texts) draw them in proportion to their number.
"""

from __future__ import annotations

from pathlib import Path

from editscale.data.text_corpus import CORPUS_FILE
from editscale.errors import ConfigError
from editscale.model.loading import read_testbed_manifest


def preserved_corpus(model_dir: str | Path, n_skill_texts: int = 600) -> tuple[list[str], int]:
    """The corpus lines (generic and skill texts, spread evenly) and how many of them are generic."""
    from transformers import AutoTokenizer

    from editscale.data.world import build_world
    from editscale.testbed.skills import SKILL_NAMES, SkillGenerator
    from editscale.testbed.specs import TestbedSpec

    model_dir = Path(model_dir)
    meta = read_testbed_manifest(model_dir)
    if meta is None:
        raise ConfigError(f"{model_dir} is not a testbed model (no manifest): a preserved corpus needs its skills")
    if n_skill_texts < 0:
        raise ConfigError(f"the number of skill texts must be 0 or more, got {n_skill_texts}")
    spec = TestbedSpec(**meta["spec"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    world = build_world(spec.n_subjects, spec.n_relations, spec.seed, n_skill_entities=spec.n_skill_entities,
                        n_background_names=spec.n_background_names, tokenize=tok.tokenize)
    skills = SkillGenerator(world, spec.seed, "train")
    flat = [" ".join(skills.training_text(SKILL_NAMES[i % len(SKILL_NAMES)])[0].split())
            for i in range(n_skill_texts)]
    generic = [ln for ln in (model_dir / CORPUS_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
    # skill text j goes after generic text round((j + 1) * len(generic) / (len(flat) + 1)): evenly spread
    after = {round((j + 1) * len(generic) / (len(flat) + 1)): j for j in range(len(flat))}
    lines = []
    for i, line in enumerate(generic, start=1):
        lines.append(line)
        if i in after:
            lines.append(flat[after[i]])
    lines += [flat[j] for j in range(len(flat)) if j not in after.values()]
    return lines, len(generic)
