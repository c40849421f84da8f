"""A synthetic knowledge world, written out as CounterFact-shaped edit records.

Invented people (multi-token names) have one object for each of a dozen relations (sport, citizenship,
birthplace, ...). Each relation has

- an *edit template* in CounterFact's style (``"{} plays the sport of"``, the object follows),
- *training frames*: generic phrasings such as ``"The {kw} of {} is"`` with the relation's keyword, and
- *held-out templates*: two frames that are never trained for this relation (they are trained for other
  relations), used only as paraphrase prompts. Recalling a fact through them is real generalisation: the
  exact template string never occurs in the training text.

Neighbours of an edit are other subjects with the same relation *and* the same true object; the
counterfactual ``target_new`` is another object of the relation's vocabulary. Everything is deterministic
for a seed (and a tokenizer, when names are chosen by their token counts).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from editscale.data.records import EditCase, EditRequest
from editscale.errors import ConfigError

# Generic frames: "{kw}" is the relation keyword, "{}" the subject slot. Each relation holds out two of them.
FRAMES = (
    "The {kw} of {} is",
    "{}'s {kw} is",
    "In terms of {kw}, {} is linked to",
    "Q: What is the {kw} of {}? A:",
    "{}, whose {kw} is",
    "Ask anyone about the {kw} of {} and they will say",
    "Records list the {kw} of {} as",
)


@dataclass(frozen=True)
class RelationSpec:
    """A relation's wording and object vocabulary, before frames are split into trained and held out."""

    relation_id: str
    keyword: str
    edit_template: str
    objects: tuple[str, ...]


RELATIONS: tuple[RelationSpec, ...] = (
    RelationSpec("sport", "sport", "{} plays the sport of",
                 ("tennis", "golf", "rugby", "cricket", "hockey", "chess", "rowing", "fencing", "boxing",
                  "cycling", "archery", "sailing")),
    RelationSpec("citizenship", "country", "{} is a citizen of",
                 ("France", "Spain", "Japan", "Brazil", "Canada", "Egypt", "Norway", "Chile", "India", "Kenya",
                  "Peru", "Mexico")),
    RelationSpec("birthplace", "birthplace", "{} was born in the city of",
                 ("Paris", "London", "Berlin", "Madrid", "Rome", "Moscow", "Tokyo", "Cairo", "Sydney", "Toronto",
                  "Chicago", "Boston")),
    RelationSpec("occupation", "profession", "{} works as a",
                 ("doctor", "lawyer", "teacher", "pilot", "farmer", "baker", "painter", "sailor", "nurse",
                  "banker", "poet", "tailor")),
    RelationSpec("language", "language", "The mother tongue of {} is",
                 ("English", "French", "German", "Spanish", "Italian", "Dutch", "Polish", "Greek", "Swedish",
                  "Finnish", "Turkish", "Danish")),
    RelationSpec("instrument", "instrument", "{} is a musician who plays the",
                 ("violin", "piano", "guitar", "flute", "drums", "cello", "harp", "trumpet", "organ", "banjo",
                  "oboe", "clarinet")),
    RelationSpec("genre", "genre", "{} performs music in the genre of",
                 ("jazz", "opera", "blues", "folk", "punk", "reggae", "techno", "gospel", "swing", "disco", "soul",
                  "metal")),
    RelationSpec("field", "field", "{} is an expert in the field of",
                 ("physics", "history", "biology", "law", "medicine", "chemistry", "economics", "geology",
                  "philosophy", "mathematics", "astronomy", "linguistics")),
    RelationSpec("residence", "home city", "{} lives in the city of",
                 ("Lisbon", "Dublin", "Oslo", "Vienna", "Prague", "Warsaw", "Athens", "Helsinki", "Budapest",
                  "Zurich", "Geneva", "Stockholm")),
    RelationSpec("food", "favourite food", "{} likes to eat",
                 ("bread", "rice", "cheese", "pasta", "soup", "fish", "apples", "honey", "beans", "olives",
                  "noodles", "mushrooms")),
    RelationSpec("pet", "pet", "{} owns a pet",
                 ("dog", "cat", "parrot", "rabbit", "horse", "goat", "turtle", "hamster", "ferret", "lizard",
                  "pony", "snake")),
    RelationSpec("colour", "colour", "{} prefers the colour",
                 ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "brown", "pink",
                  "silver")),
)


@dataclass(frozen=True)
class Relation:
    """A relation of the world: its templates (``{}`` = subject; the object follows) and objects."""

    relation_id: str
    keyword: str
    edit_template: str
    train_frames: tuple[str, ...]
    heldout_templates: tuple[str, ...]
    objects: tuple[str, ...]

    @property
    def train_templates(self) -> tuple[str, ...]:
        """Every template trained for this relation, the edit template first."""
        return (self.edit_template, *self.train_frames)


def make_relations(n_relations: int = len(RELATIONS), n_heldout: int = 2) -> tuple[Relation, ...]:
    """The first ``n_relations`` relations; relation i holds out frames i and i+3 (mod the frame count).

    Every frame is held out by some relations and trained by the others, so a held-out template's wording
    is known to the model while the template itself is never trained for its relation.
    """
    if not 1 <= n_relations <= len(RELATIONS):
        raise ConfigError(f"n_relations must be between 1 and {len(RELATIONS)}, got {n_relations}")
    if not 1 <= n_heldout < len(FRAMES):
        raise ConfigError(f"n_heldout must be between 1 and {len(FRAMES) - 1}, got {n_heldout}")
    out = []
    for i, spec in enumerate(RELATIONS[:n_relations]):
        held = sorted({(i + 3 * j) % len(FRAMES) for j in range(n_heldout)})
        frames = [f.replace("{kw}", spec.keyword) for f in FRAMES]
        out.append(Relation(
            relation_id=spec.relation_id,
            keyword=spec.keyword,
            edit_template=spec.edit_template,
            train_frames=tuple(f for j, f in enumerate(frames) if j not in held),
            heldout_templates=tuple(frames[j] for j in held),
            objects=spec.objects,
        ))
    return tuple(out)


# --- names ---------------------------------------------------------------------------------------------
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr",
           "st", "sh", "th", "ch", "kl", "pl", "vr", "sk", "h", "j", "w")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ia", "y", "ae", "io")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "k", "x", "nd", "rt", "sk", "lm", "v", "z")


def _syllable(rng: random.Random, with_onset: bool = True) -> str:
    onset = rng.choice(_ONSETS) if with_onset else ""
    return onset + rng.choice(_NUCLEI) + rng.choice(_CODAS)


def _word(rng: random.Random, n_syll: int) -> list[str]:
    sylls = [_syllable(rng, with_onset=(i == 0 or rng.random() < 0.8)) for i in range(n_syll)]
    sylls[0] = sylls[0].capitalize()
    return sylls


def name_syllables(rng: random.Random) -> list[str]:
    """Syllables of one invented name "First Last" (the last name begins with a space-marked syllable)."""
    first = _word(rng, rng.randint(1, 3))
    last = _word(rng, rng.randint(2, 3))
    return first + [" " + last[0]] + last[1:]


def name_pieces_default(name_sylls: Sequence[str]) -> list[str]:
    """Token-free stand-in for a tokenizer: one piece per syllable."""
    return list(name_sylls)


def _syllable_inventory() -> list[str]:
    return [o + n + c for o in ("", *_ONSETS) for n in _NUCLEI for c in _CODAS if c or o]


def syllable_text(seed: int = 0, n: int = 4000) -> list[str]:
    """Words built from name syllables (for tokenizer training), without any particular name."""
    rng = random.Random(seed)
    inv = _syllable_inventory()
    words = []
    for _ in range(n):
        words.append(" ".join(rng.choice(inv).capitalize() if rng.random() < 0.5 else rng.choice(inv)
                              for _ in range(8)))
    return words


def generate_names(
    n: int,
    seed: int,
    tokenize: Callable[[str], Sequence[str]] | None = None,
    min_tokens: int = 4,
    max_tokens: int = 9,
    max_per_last_token: int | None = None,
    exclude: set[str] | None = None,
) -> list[str]:
    """``n`` distinct invented names of ``min_tokens``-``max_tokens`` pieces with diverse last pieces.

    ``tokenize(" " + name)`` gives the pieces (the tokens a name has mid-sentence); without it each syllable
    is one piece. At most ``max_per_last_token`` names share a last piece (default: as few as the supply
    allows, one when possible, relaxed only when 5,000 candidates in a row are refused). A subject's key at
    the edited layer is dominated by its last token, so subjects that share one are edited together.
    """
    rng = random.Random(seed)
    exclude = set(exclude or ())
    names: list[str] = []
    seen: set[str] = set()
    last_counts: Counter[str] = Counter()
    cap = max_per_last_token or 1
    misses = 0
    while len(names) < n:
        sylls = name_syllables(rng)
        name = "".join(sylls)
        if name in seen or name in exclude:
            continue
        pieces = list(tokenize(" " + name)) if tokenize is not None else name_pieces_default(sylls)
        if not min_tokens <= len(pieces) <= max_tokens:
            continue
        if last_counts[pieces[-1]] >= cap:
            misses += 1
            if max_per_last_token is None and misses > 5000:
                cap, misses = cap + 1, 0
            continue
        misses = 0
        seen.add(name)
        last_counts[pieces[-1]] += 1
        names.append(name)
    return names


# --- the world -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """Subjects, relations and the true facts; skill entities and background names are never edited."""

    seed: int
    relations: tuple[Relation, ...]
    subjects: tuple[str, ...]
    facts: dict[str, dict[str, str]]  # subject -> relation_id -> object
    skill_entities: tuple[str, ...]
    background_names: tuple[str, ...]

    def relation(self, relation_id: str) -> Relation:
        for r in self.relations:
            if r.relation_id == relation_id:
                return r
        raise KeyError(relation_id)

    def facts_of(self, subject: str) -> dict[str, str]:
        return self.facts[subject]

    def fact_prompts(self, split: Literal["train", "heldout"], subjects: Sequence[str] | None = None
                     ) -> list[tuple[str, str]]:
        """(prompt text, true object) for every fact through every trained (or held-out) template."""
        out = []
        for s in self.subjects if subjects is None else subjects:
            for r in self.relations:
                templates = r.train_templates if split == "train" else r.heldout_templates
                out.extend((t.replace("{}", s), self.facts[s][r.relation_id]) for t in templates)
        return out

    def cases(self, n_neighbours: int = 10) -> list[EditCase]:
        """One edit case per (subject, relation), in rounds: each round edits every subject once.

        The first ``len(subjects)`` cases therefore have distinct subjects, in a seeded order, and any
        prefix of the list covers the relations evenly.
        """
        rng = random.Random(f"{self.seed}-cases")
        by_object: dict[tuple[str, str], list[str]] = {}
        for s in self.subjects:
            for rid, obj in self.facts[s].items():
                by_object.setdefault((rid, obj), []).append(s)
        orders = {s: rng.sample(range(len(self.relations)), len(self.relations)) for s in self.subjects}
        cases: list[EditCase] = []
        for rnd in range(len(self.relations)):
            subjects = list(self.subjects)
            rng.shuffle(subjects)
            for s in subjects:
                rel = self.relations[orders[s][rnd]]
                cases.append(self._case(str(len(cases)), s, rel, by_object, rng, n_neighbours))
        return cases

    def _case(self, case_id: str, subject: str, rel: Relation, by_object: dict[tuple[str, str], list[str]],
              rng: random.Random, n_neighbours: int) -> EditCase:
        true = self.facts[subject][rel.relation_id]
        new = rng.choice([o for o in rel.objects if o != true])
        templates = rel.train_templates

        def render(others: list[str]) -> tuple[str, ...]:
            picked = rng.sample(others, min(n_neighbours, len(others)))
            return tuple(templates[i % len(templates)].replace("{}", o) for i, o in enumerate(picked))

        neighbours = [o for o in by_object[(rel.relation_id, true)] if o != subject]
        attributes = by_object.get((rel.relation_id, new), [])
        others = tuple((r.edit_template.replace("{}", subject), self.facts[subject][r.relation_id])
                       for r in self.relations if r.relation_id != rel.relation_id)
        return EditCase(
            request=EditRequest(prompt=rel.edit_template, subject=subject, target_new=new, target_true=true,
                                case_id=case_id, relation_id=rel.relation_id),
            paraphrase_prompts=tuple(t.replace("{}", subject) for t in rel.heldout_templates),
            neighborhood_prompts=render(neighbours),
            attribute_prompts=render(attributes),
            generation_prompts=(rel.edit_template.replace("{}", subject), f"{subject} is"),
            other_fact_prompts=others,
        )


def build_world(
    n_subjects: int,
    n_relations: int = len(RELATIONS),
    seed: int = 0,
    *,
    n_skill_entities: int = 400,
    n_background_names: int = 2000,
    tokenize: Callable[[str], Sequence[str]] | None = None,
    n_heldout: int = 2,
) -> World:
    """A seeded world of ``n_subjects`` subjects with one object per relation.

    ``tokenize`` (``str -> pieces``) lets names be chosen by their real token counts (4-9 tokens) and with
    diverse last tokens; without it syllables stand in for tokens. Objects are drawn so that every object of
    a relation has about the same number of subjects (many neighbours for every fact).
    """
    if n_subjects < 2:
        raise ConfigError(f"a world needs at least 2 subjects, got {n_subjects}")
    relations = make_relations(n_relations, n_heldout)
    subjects = generate_names(n_subjects, seed, tokenize)
    skill = generate_names(n_skill_entities, seed + 1, tokenize, exclude=set(subjects))
    background = generate_names(n_background_names, seed + 2, tokenize, max_per_last_token=10 ** 9,
                                exclude=set(subjects) | set(skill))
    rng = random.Random(f"{seed}-facts")
    facts: dict[str, dict[str, str]] = {s: {} for s in subjects}
    for rel in relations:
        objs = [rel.objects[i % len(rel.objects)] for i in range(n_subjects)]
        rng.shuffle(objs)
        for s, o in zip(subjects, objs):
            facts[s][rel.relation_id] = o
    return World(seed=seed, relations=relations, subjects=tuple(subjects), facts=facts,
                 skill_entities=tuple(skill), background_names=tuple(background))


def render_fact(template: str, subject: str, obj: str) -> str:
    """A fact as a training sentence: the template, the object, a full stop."""
    return f"{template.replace('{}', subject)} {obj}."
