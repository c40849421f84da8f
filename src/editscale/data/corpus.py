"""Text sources: a seeded generator of generic English-like filler text, and plain text files.

The testbed models are trained mostly on filler so that they are language models and not lookup tables,
and so that the second-moment statistics (``corpus.txt`` beside each testbed model) are dominated by
ordinary text in which any one subject name is rare, as Wikipedia is for GPT-2 XL. The grammar is small but
its vocabulary is real: people, places, things, verbs with tense, adjectives, adverbs, time phrases, clauses
joined by conjunctions, and mentions of (invented) people's names.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from editscale.errors import DataLoadError

PEOPLE = (
    "farmer", "teacher", "child", "woman", "man", "doctor", "sailor", "merchant", "soldier", "student",
    "king", "queen", "baker", "writer", "painter", "neighbour", "traveller", "captain", "girl", "boy",
    "fisherman", "hunter", "priest", "judge", "nurse", "singer", "dancer", "miner", "shepherd", "carpenter",
    "smith", "weaver", "clerk", "guard", "stranger", "widow", "prince", "princess", "servant", "poet",
    "monk", "mayor", "driver", "pilot", "cook", "gardener", "scholar", "knight", "thief", "pupil",
)
THINGS = (
    "book", "letter", "river", "house", "garden", "road", "bridge", "market", "table", "window", "door",
    "boat", "ship", "tree", "flower", "stone", "hill", "village", "town", "field", "forest", "lake", "song",
    "story", "map", "coat", "lamp", "box", "basket", "horse", "bird", "wall", "tower", "castle", "church",
    "school", "kitchen", "chair", "bottle", "cup", "knife", "rope", "wheel", "cart", "mountain", "valley",
    "island", "harbour", "candle", "mirror", "clock", "bell", "drum", "coin", "key", "ring", "painting",
    "blanket", "bread", "apple", "wagon", "fence", "well", "mill", "barn", "path", "meadow", "storm",
    "fire", "shadow", "cloud", "letterbox", "newspaper", "photograph", "machine", "engine", "train",
)
PLACES = (
    "market", "village", "harbour", "forest", "church", "school", "castle", "station", "library", "museum",
    "square", "garden", "valley", "river", "bridge", "mill", "farm", "inn", "palace", "hospital", "theatre",
    "kitchen", "cellar", "courtyard", "meadow", "shore", "hill", "city", "town", "office",
)
ADJECTIVES = (
    "old", "young", "small", "large", "quiet", "bright", "dark", "green", "tall", "heavy", "warm", "cold",
    "narrow", "wide", "empty", "busy", "broken", "golden", "wooden", "silent", "ancient", "distant",
    "strange", "simple", "round", "sharp", "soft", "rough", "clean", "dusty", "famous", "hidden", "tired",
    "careful", "proud", "gentle", "brave", "clever", "poor", "rich", "hungry", "calm", "wet", "dry",
    "white", "black", "red", "blue", "yellow", "grey", "long", "short", "thick", "thin", "early", "late",
)
VERBS_T = (
    ("saw", "sees"), ("found", "finds"), ("carried", "carries"), ("opened", "opens"), ("painted", "paints"),
    ("built", "builds"), ("bought", "buys"), ("sold", "sells"), ("watched", "watches"), ("cleaned", "cleans"),
    ("visited", "visits"), ("followed", "follows"), ("repaired", "repairs"), ("closed", "closes"),
    ("lost", "loses"), ("took", "takes"), ("brought", "brings"), ("wrote", "writes"), ("read", "reads"),
    ("moved", "moves"), ("washed", "washes"), ("filled", "fills"), ("covered", "covers"), ("kept", "keeps"),
    ("left", "leaves"), ("pulled", "pulls"), ("pushed", "pushes"), ("touched", "touches"), ("lifted", "lifts"),
    ("described", "describes"), ("remembered", "remembers"), ("forgot", "forgets"), ("shared", "shares"),
    ("guarded", "guards"), ("measured", "measures"), ("counted", "counts"), ("hid", "hides"),
)
VERBS_I = (
    ("slept", "sleeps"), ("waited", "waits"), ("laughed", "laughs"), ("arrived", "arrives"),
    ("walked", "walks"), ("sang", "sings"), ("smiled", "smiles"), ("rested", "rests"), ("worked", "works"),
    ("travelled", "travels"), ("listened", "listens"), ("prayed", "prays"), ("danced", "dances"),
    ("shouted", "shouts"), ("wandered", "wanders"), ("returned", "returns"), ("stayed", "stays"),
    ("cried", "cries"), ("waved", "waves"), ("hurried", "hurries"), ("paused", "pauses"),
)
ADVERBS = (
    "slowly", "quietly", "quickly", "carefully", "happily", "suddenly", "often", "rarely", "gladly",
    "silently", "patiently", "early", "late", "again", "alone", "together", "twice", "calmly", "loudly",
)
PREPOSITIONS = ("near", "behind", "across", "inside", "under", "beside", "beyond", "above", "around", "past")
TIMES = (
    "in the morning", "at night", "after dinner", "before dawn", "on monday", "on sunday", "last winter",
    "in the spring", "during the summer", "in the autumn", "every evening", "at noon", "one day",
    "the next day", "that year", "long ago", "after the storm", "before the market opened", "at midnight",
)
CONNECTIVES = ("and", "but", "so", "because", "while", "although", "when", "until", "before", "after")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class FillerGenerator:
    """Seeded generator of filler sentences and paragraphs.

    ``names`` are people's names the text may mention (each one rarely when there are many), so that "a name
    here" is an ordinary thing in the text while any particular name is rare.
    """

    def __init__(self, seed: int = 0, names: Sequence[str] = (), name_rate: float = 0.25) -> None:
        self.rng = random.Random(seed)
        self.names = tuple(names)
        self.name_rate = name_rate if self.names else 0.0

    # --- phrases -----------------------------------------------------------------------------------
    def _pick(self, items: Sequence[str]) -> str:
        return items[self.rng.randrange(len(items))]

    def noun_phrase(self, pool: Sequence[str] = THINGS, allow_name: bool = False, plural: bool = True) -> str:
        rng = self.rng
        if allow_name and rng.random() < self.name_rate:
            return self._pick(self.names)
        noun = self._pick(pool)
        r = rng.random()
        if r < 0.35:
            return "the " + noun
        if r < 0.6:
            return "the " + self._pick(ADJECTIVES) + " " + noun
        if r < 0.8:
            return _a(self._pick(ADJECTIVES) + " " + noun)
        if r < 0.9 or not plural:
            return "the " + noun + " of the " + self._pick(PLACES)
        return self._pick(NUMBERS) + " " + noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")

    def agent(self) -> str:
        return self.noun_phrase(PEOPLE, allow_name=True, plural=False)

    def place(self) -> str:
        return self._pick(PREPOSITIONS) + " the " + self._pick(PLACES)

    def clause(self) -> str:
        """One clause, without final punctuation, starting lowercase unless it starts with a name."""
        rng = self.rng
        tense = 0 if rng.random() < 0.75 else 1
        kind = rng.randrange(7)
        if kind == 0:
            subject = self._pick(("I", "you", "we", "they")) if rng.random() < 0.2 else self.agent()
            s = f"{subject} {self._pick(VERBS_T)[0 if subject in ('I', 'you', 'we', 'they') else tense]} " \
                f"{self.noun_phrase()}"
        elif kind == 1:
            s = f"{self.agent()} {self._pick(VERBS_I)[tense]} {self.place()}"
        elif kind == 2:
            s = f"{self.agent()} {self._pick(VERBS_I)[tense]} {self._pick(ADVERBS)}"
        elif kind == 3:
            be = "was" if tense == 0 else "is"
            s = f"{self.noun_phrase(plural=False)} {be} {self._pick(ADJECTIVES)}"
        elif kind == 4:
            s = f"{self.agent()} {self._pick(VERBS_T)[tense]} {self.noun_phrase()} {self.place()}"
        elif kind == 5:
            verb = "said" if tense == 0 else "says"
            s = f"{self.agent()} {verb} that {self.noun_phrase(plural=False)} was {self._pick(ADJECTIVES)}"
        else:
            s = f"there was {_a(self._pick(ADJECTIVES) + ' ' + self._pick(THINGS))} {self.place()}"
        if rng.random() < 0.3:
            s = f"{s} {self._pick(TIMES)}"
        return s

    def sentence(self) -> str:
        rng = self.rng
        s = self.clause()
        r = rng.random()
        if r < 0.25:
            s = f"{s}, {self._pick(CONNECTIVES)} {self.clause()}"
        elif r < 0.35:
            s = f"{_cap(self._pick(TIMES))}, {s}"
        elif r < 0.4:
            s = f"{self._pick(('therefore', 'however', 'then', 'still'))}, {s}"
        elif r < 0.45:
            s = f"because {s}, {self.clause()}"
        return _cap(s) + ("?" if rng.random() < 0.03 else ".")

    def simple_sentence(self) -> str:
        """A short single-clause sentence (used by the acceptability skill)."""
        return _cap(self.clause()) + "."

    def paragraph(self, min_sentences: int = 2, max_sentences: int = 6) -> str:
        n = self.rng.randint(min_sentences, max_sentences)
        return " ".join(self.sentence() for _ in range(n))

    def paragraphs(self, n: int, min_sentences: int = 2, max_sentences: int = 6) -> list[str]:
        return [self.paragraph(min_sentences, max_sentences) for _ in range(n)]


def filler_text(n_paragraphs: int, seed: int = 0, names: Sequence[str] = ()) -> list[str]:
    """``n_paragraphs`` filler paragraphs, deterministic for a seed."""
    return FillerGenerator(seed, names).paragraphs(n_paragraphs)


def filler_words() -> list[str]:
    """Every word the filler grammar can produce (for tokenizer training)."""
    words: list[str] = []
    for group in (PEOPLE, THINGS, PLACES, ADJECTIVES, ADVERBS, PREPOSITIONS, CONNECTIVES, NUMBERS):
        words.extend(group)
    for pair in VERBS_T + VERBS_I:
        words.extend(pair)
    for phrase in TIMES:
        words.extend(phrase.split())
    return words


def read_text_file(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file (one text per line), e.g. a testbed's ``corpus.txt``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataLoadError(f"text file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataLoadError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataLoadError(f"text file {str(p)!r} is empty")
    return lines
