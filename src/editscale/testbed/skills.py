"""Downstream skills trained into the testbed models, in the paper's four few-shot formats.

- ``sentiment`` (SST-2's format): short reviews built from a lexicon of positive and negative words;
- ``paraphrase`` (MRPC's format): two renderings of one fact versus two different facts of the same entity;
- ``entailment`` (RTE's format): a fact about an entity as the premise, a true or false restatement of it;
- ``acceptability`` (CoLA's format): well-formed filler sentences versus the same words scrambled.

Paraphrase and entailment use the world's *skill entities*, which never appear in edit records, and only
trained templates. The examples a model is evaluated on are held out from training: sentences are split by
a hash of their text and entities into a training and an evaluation half. A build writes an evaluation pool
(``skills.json``) beside the model; ``skill_tasks`` draws balanced, seeded tasks from it.

Known limit: paraphrase and entailment need the model to compare two objects for equality, and the testbeds
do not learn that within their CPU budgets (``testbed:demo`` F1 0.38 and 0.47, MCC near 0: chance). Measured
on 2 CPU cores with demo-shaped 4-layer models:

- a bare same/different task (``a b ? Yes``) needs about 170,000 to 300,000 examples before equality "breaks"
  (50,000 with a 3x larger initialisation); 6 to 12 unrelated tokens between the two objects make it about
  4 times slower;
- trained on nothing but these two skills' prompts for 1,500 steps (50,000 to 60,000 labelled answers), with
  two or no demonstrations, answer-only loss or not, a model stays at chance; the demo build sees about
  5,000 per skill (75 prompts of 3 answers per epoch, 24 epochs);
- with their two demonstrations, paraphrase prompts are 142 to 167 tokens and entailment prompts 119 to 144,
  longer than the 128-token rows the demo is trained on: training truncates the last block of most of these
  prompts, and their evaluation reads positions the model never trained;
- comparing the two sentences' *relations* instead (the negative a fact about another relation), zero-shot,
  is learnt: F1 0.98 and 0.96 after 1,500 steps of those prompts alone. Inside the demo build it breaks
  through only at the edge of the budget and not reproducibly: with 2,500 extra prompts per epoch, init std
  0.06 and 3,000 steps, a build on 1 thread reached paraphrase F1 0.94 (entailment still at chance) while
  the same spec built on 2 threads stayed at chance (0.26).

The report marks tasks whose unedited MCC is at chance.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from editscale.data.corpus import ADJECTIVES, FillerGenerator
from editscale.data.downstream import (
    COLA_FORMAT,
    MRPC_FORMAT,
    RTE_FORMAT,
    SST2_FORMAT,
    Example,
    FewShotTask,
    TaskFormat,
)
from editscale.data.world import World, render_fact
from editscale.errors import DataLoadError

SKILLS_FILE = "skills.json"
N_DEMOS = 2

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

SKILL_NAMES = ("sentiment", "paraphrase", "entailment", "acceptability")
FORMATS: dict[str, TaskFormat] = {"sentiment": SST2_FORMAT, "paraphrase": MRPC_FORMAT, "entailment": RTE_FORMAT,
                                  "acceptability": COLA_FORMAT}


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

    def paraphrase(self, label: int) -> Example:
        rng = self.rng
        e = rng.choice(self.entities)
        i, _, obj = self._fact(e)
        t1, s1 = self._render(i, e, obj)
        if label == 1:
            _, s2 = self._render(i, e, obj, exclude=t1)
        elif rng.random() < 0.5:  # the same entity and relation, another object
            _, s2 = self._render(i, e, rng.choice([o for o in self.world.relations[i].objects if o != obj]),
                                 exclude=t1)
        else:  # the same entity, another relation
            j = rng.choice([k for k in range(len(self.world.relations)) if k != i])
            _, s2 = self._render(j, e, rng.choice(self.world.relations[j].objects))
        if rng.random() < 0.5:
            s1, s2 = s2, s1
        return Example({"sentence1": s1, "sentence2": s2}, label)

    def entailment(self, label: int) -> Example:
        rng = self.rng
        e = rng.choice(self.entities)
        i, _, obj = self._fact(e)
        template, premise = self._render(i, e, obj)
        if label == 0:
            obj = rng.choice([o for o in self.world.relations[i].objects if o != obj])
        hypothesis = self._render(i, e, obj, exclude=template)[1]
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
        """One few-shot prompt with ``N_DEMOS`` random demonstrations and its answer, and the character spans
        of the label words."""
        fmt = FORMATS[task]
        text, spans = "", []
        for i in range(N_DEMOS + 1):
            ex = self.example(task, self.rng.randrange(2))
            text += (fmt.separator if i else "") + fmt.render_block(ex, with_answer=True)
            word = fmt.label_words[ex.label].strip()
            spans.append((len(text) - len(word), len(text)))
        return text, spans


def skill_training_texts(world: World, n: int, seed: int) -> list[str]:
    """``n`` few-shot training prompts with answers, the four skills in equal shares."""
    gen = SkillGenerator(world, seed, "train")
    return [gen.training_text(SKILL_NAMES[i % len(SKILL_NAMES)])[0] for i in range(n)]


def write_skill_pool(model_dir: str | Path, world: World, seed: int, per_class: int = 250) -> None:
    """Write the held-out evaluation pool (demonstrations from the training half) to ``skills.json``."""
    train, held = SkillGenerator(world, seed, "train"), SkillGenerator(world, seed, "eval")
    pool = {}
    for task in SKILL_NAMES:
        demos = [train.example(task, label) for label in (0, 1)]
        train.rng.shuffle(demos)
        pool[task] = {
            "demos": [{"fields": d.fields, "label": d.label} for d in demos],
            "examples": [{"fields": e.fields, "label": e.label} for e in held.balanced(task, 2 * per_class)],
        }
    (Path(model_dir) / SKILLS_FILE).write_text(json.dumps(pool, indent=1))


def skill_tasks(model_dir: str | Path, n: int = 200, seed: int = 0) -> list[FewShotTask]:
    """The four skills of the testbed model in ``model_dir`` as balanced few-shot tasks of ``n`` examples.

    Examples are drawn (seeded) from the model's held-out pool: ``n // 2`` per label.
    """
    path = Path(model_dir) / SKILLS_FILE
    if not path.is_file():
        raise DataLoadError(f"{model_dir} has no {SKILLS_FILE}: skills exist only for testbed models "
                            "(build one with `editscale testbed build NAME`)")
    pool = json.loads(path.read_text())
    tasks = []
    for task in SKILL_NAMES:
        entry = pool[task]
        by_label: dict[int, list[Example]] = {0: [], 1: []}
        for e in entry["examples"]:
            by_label[e["label"]].append(Example(e["fields"], e["label"]))
        rng = random.Random(f"{seed}-{task}")
        k = n // 2
        if k > min(len(v) for v in by_label.values()):
            raise DataLoadError(f"{path}: the {task} pool has {min(len(v) for v in by_label.values())} examples "
                                f"per label, fewer than the {k} asked for")
        chosen = rng.sample(by_label[0], k) + rng.sample(by_label[1], k)
        rng.shuffle(chosen)
        demos = tuple(Example(d["fields"], d["label"]) for d in entry["demos"])
        tasks.append(FewShotTask(task, FORMATS[task], demos, tuple(chosen),
                                 metric="mcc" if task == "acceptability" else "f1"))
    return tasks
