"""Downstream skills trained into the testbed models, in the paper's four few-shot formats.

- ``sentiment`` (SST-2's format): short reviews built from a lexicon of positive and negative words;
- ``paraphrase`` (MRPC's format): two renderings of one fact versus facts of two different relations of the
  same entity;
- ``entailment`` (RTE's format): a fact about an entity as the premise; as the hypothesis, the same fact in
  another template (True) or a fact of the entity about another relation, which the premise does not
  establish (False);
- ``acceptability`` (CoLA's format): well-formed filler sentences versus the same words scrambled.

Paraphrase and entailment use the world's *skill entities*, which never appear in edit records, and only
trained templates. The examples a model is evaluated on are held out from training: sentences are split by
a hash of their text and entities into a training and an evaluation half. A build writes an evaluation pool
(``skills.json``) beside the model; ``editscale.data.downstream.skill_tasks`` draws balanced, seeded tasks
from it.

Why paraphrase and entailment are shaped this way (measured on 2 CPU cores, demo-shaped 4-layer models):
both ask the model to compare the two sentences of one block, which a small model learns only after a
plateau, and only when the comparison is simple enough:

- comparing two *objects* for equality, as the first versions did (a changed object was a negative), was
  never learnt: a model trained on nothing but those prompts for 1,500 steps (50,000 to 60,000 labelled
  answers, with two or no demonstrations, answer-only loss or not) stayed at chance, and so did testbed:demo
  (F1 0.38 and 0.47);
- comparing the *relations* of the two sentences is learnt, after roughly 30,000 to 40,000 labelled answers
  (trained alone, zero-shot prompts reached F1 0.98 and 0.96 after 1,500 steps);
- the prompts are zero-shot (``N_DEMOS``): with two demonstrations they run to 119 to 167 tokens, longer
  than the 128-token rows the testbeds train on, so training cut their last block and evaluation read
  untrained positions;
- training masks attention across the documents packed into a row (``train.DataStream``). Without the mask
  a pair prompt followed unrelated fact sentences whose relation words the comparison had to learn to
  ignore: the demo build broke through only at the end of its budget, and not in every build (paraphrase
  F1 0.94 built on 1 thread, 0.26 on 2). With it, four demo-shaped builds (seeds 0 and 1, 300 or 600 skill
  prompts per epoch) all ended with paraphrase and entailment at F1 0.97 to 1.00, the earliest passing 0.9
  at step 1,500 of 3,000 and the latest at 2,750. Acceptability ended at 0.88 in one of the two builds with
  300 skill prompts (0.93 in the other), and at 0.96 and 0.97 with testbed:demo's 600. A loss weight of 15
  on the label words (against 5) broke the pair skills earlier in one seed but made the label biases swing
  (sentiment F1 between 0 and 0.67 at steps 750 to 1,500), so the weight stays 5.

``TestbedSpec.pair_docs`` adds zero-shot paraphrase and entailment prompts to every epoch, and a larger
initialisation (``init_std``) shortens the plateau (3 to 4 times on a bare same/different task).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from editscale.data.corpus import ADJECTIVES, FillerGenerator
from editscale.data.downstream import SKILL_FORMATS as FORMATS
from editscale.data.downstream import SKILL_NAMES, SKILLS_FILE, Example
from editscale.data.world import World, render_fact

# demonstrations before each prompt's query. Paraphrase and entailment are zero-shot: with two demonstrations
# their prompts (119 to 167 tokens) outgrow the 128-token rows the testbeds train on, and the demonstrations'
# relation words blur the comparison the model must make inside one block.
N_DEMOS = {"sentiment": 2, "paraphrase": 0, "entailment": 0, "acceptability": 2}

POSITIVE = (
    "wonderful", "delightful", "brilliant", "charming", "lovely", "superb", "excellent", "pleasant", "joyful",
    "beautiful", "touching", "gripping", "funny", "moving", "marvellous", "splendid", "inspiring", "fresh",
    "graceful", "enjoyable", "clever", "stunning", "warm", "perfect",
)
NEGATIVE = (
    "terrible", "boring", "awful", "dull", "dreadful", "tedious", "clumsy", "painful", "bland", "weak", "messy",
    "annoying", "ugly", "stupid", "lifeless", "tiresome", "hollow", "awkward", "poor", "miserable", "sloppy",
    "shallow", "silly", "horrible",
)
REVIEW_NOUNS = ("film", "book", "play", "song", "meal", "show", "story", "album", "game", "concert", "novel",
                "movie", "script", "ending", "music", "acting", "plot", "cast")
_INTENSIFIERS = ("very", "truly", "rather", "quite", "really", "simply", "so")
_REVIEW_FRAMES = (
    "the {noun} was {adj}",
    "a {adj} {noun}",
    "the {noun} was {adj} and {adj2}",
    "i thought the {noun} was {int} {adj}",
    "what a {adj} {noun}",
    "the {neutral} {noun} felt {adj}",
    "{int} {adj} , from the {noun} to the {noun2}",
    "an {int} {adj} {noun} with a {adj2} {noun2}",
)

def _held_out(text: str) -> bool:
    """Whether a generated sentence belongs to the evaluation half (a fixed fifth of all sentences)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 5 == 0


class SkillGenerator:
    """Seeded examples of the four skills, from the training half or the evaluation half."""

    def __init__(self, world: World, seed: int, split: str) -> None:
        self.world = world
        self.rng = random.Random(f"{seed}-skills-{split}")
        self.eval = split == "eval"
        half = len(world.skill_entities) // 2
        self.entities = world.skill_entities[half:] if self.eval else world.skill_entities[:half]
        self.filler = FillerGenerator(seed + (7 if self.eval else 3))
        self.makers: dict[str, Callable[[int], Example]] = {
            "sentiment": self.sentiment, "paraphrase": self.paraphrase, "entailment": self.entailment,
            "acceptability": self.acceptability,
        }

    def _in_split(self, text: str) -> bool:
        return _held_out(text) == self.eval

    def example(self, task: str, label: int) -> Example:
        return self.makers[task](label)

    # --- the four tasks ----------------------------------------------------------------------------
    def sentiment(self, label: int) -> Example:
        rng = self.rng
        lex = POSITIVE if label == 1 else NEGATIVE
        while True:
            a, a2 = rng.sample(lex, 2)
            n, n2 = rng.sample(REVIEW_NOUNS, 2)
            text = rng.choice(_REVIEW_FRAMES).format(noun=n, noun2=n2, adj=a, adj2=a2, int=rng.choice(_INTENSIFIERS),
                                                     neutral=rng.choice(ADJECTIVES))
            if self._in_split(text):
                return Example({"sentence": text}, label)

    def _fact(self, entity: str, relation_index: int | None = None) -> tuple[int, str, str]:
        rels = self.world.relations
        i = self.rng.randrange(len(rels)) if relation_index is None else relation_index
        return i, entity, self.rng.choice(rels[i].objects)

    def _render(self, i: int, entity: str, obj: str, exclude: str | None = None) -> tuple[str, str]:
        templates = [t for t in self.world.relations[i].train_templates if t != exclude]
        t = self.rng.choice(templates)
        return t, render_fact(t, entity, obj)

    def _other_fact(self, entity: str, i: int) -> str:
        """A rendering of a fact of ``entity`` about a relation other than the ``i``-th."""
        j = self.rng.choice([k for k in range(len(self.world.relations)) if k != i])
        return self._render(j, entity, self.rng.choice(self.world.relations[j].objects))[1]

    def paraphrase(self, label: int) -> Example:
        """Two renderings of one fact (1), or two facts of the same entity about different relations (0)."""
        rng = self.rng
        e = rng.choice(self.entities)
        i, _, obj = self._fact(e)
        t1, s1 = self._render(i, e, obj)
        s2 = self._render(i, e, obj, exclude=t1)[1] if label == 1 else self._other_fact(e, i)
        if rng.random() < 0.5:
            s1, s2 = s2, s1
        return Example({"sentence1": s1, "sentence2": s2}, label)

    def entailment(self, label: int) -> Example:
        """A fact as the premise; as the hypothesis, the same fact in another template (1) or a fact of the same
        entity about another relation, which the premise does not establish (0)."""
        rng = self.rng
        e = rng.choice(self.entities)
        i, _, obj = self._fact(e)
        template, premise = self._render(i, e, obj)
        hypothesis = self._render(i, e, obj, exclude=template)[1] if label == 1 else self._other_fact(e, i)
        return Example({"premise": premise, "hypothesis": hypothesis}, label)

    def acceptability(self, label: int) -> Example:
        rng = self.rng
        while True:
            text = self.filler.simple_sentence()
            words = text[:-1].split()
            if len(words) < 5 or not self._in_split(text):
                continue
            if label == 1:
                return Example({"sentence": text}, 1)
            words = [w if w[:1].isupper() and i > 0 else w.lower() for i, w in enumerate(words)]
            scrambled = words[:]
            while scrambled == words:
                rng.shuffle(scrambled)
            s = " ".join(scrambled)
            return Example({"sentence": s[:1].upper() + s[1:] + "."}, 0)

    # --- few-shot texts ----------------------------------------------------------------------------
    def balanced(self, task: str, n: int) -> list[Example]:
        """``n`` examples, alternating labels, in a seeded order."""
        out = [self.example(task, i % 2) for i in range(n)]
        self.rng.shuffle(out)
        return out

    def training_text(self, task: str) -> tuple[str, list[tuple[int, int]]]:
        """One prompt with ``N_DEMOS[task]`` random demonstrations and its answer, and the character spans of
        the label words."""
        fmt = FORMATS[task]
        text, spans = "", []
        for i in range(N_DEMOS[task] + 1):
            ex = self.example(task, self.rng.randrange(2))
            text += (fmt.separator if i else "") + fmt.render_block(ex, with_answer=True)
            word = fmt.label_words[ex.label].strip()
            spans.append((len(text) - len(word), len(text)))
        return text, spans


def write_skill_pool(model_dir: str | Path, world: World, seed: int, per_class: int = 250) -> None:
    """Write the held-out evaluation pool (demonstrations from the training half) to ``skills.json``."""
    train, held = SkillGenerator(world, seed, "train"), SkillGenerator(world, seed, "eval")
    pool = {}
    for task in SKILL_NAMES:
        demos = [train.example(task, label) for label in (0, 1)] if N_DEMOS[task] else []
        train.rng.shuffle(demos)
        pool[task] = {
            "demos": [{"fields": d.fields, "label": d.label} for d in demos],
            "examples": [{"fields": e.fields, "label": e.label} for e in held.balanced(task, 2 * per_class)],
        }
    (Path(model_dir) / SKILLS_FILE).write_text(json.dumps(pool, indent=1))
