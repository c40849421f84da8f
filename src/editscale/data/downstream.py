"""Few-shot classification tasks in the formats of Gupta et al. 2024 (appendix A.3, Tables 4-7).

A task is labelled examples + a few-shot format + label words. The evaluator (``eval/downstream.py``)
classifies an example by comparing the model's probabilities of the label words after the prompt.
The same formats serve the four GLUE tasks and the testbed's synthetic twins (``testbed/skills.py`` builds
them into a model directory's ``skills.json``; ``skill_tasks`` here reads them back).

Layout of the prompts: the paper's tables print the demonstrations' words; their whitespace is that of the
authors' code (scalable-model-editing/gradual-catastrophic-forgetting, ``glue_eval/*_eval.py``): each block
on its own lines (MRPC and NLI too, which the tables flatten to one line) and a blank line between blocks.

GLUE dev sets are read from a folder the user gives (the GLUE TSV layout, or a Hugging Face export as TSV
with the ``datasets`` column names and numeric labels), or from the hub through ``datasets`` where a network
exists. Label index 1 is the positive class everywhere: positive sentiment, paraphrase, acceptable, and for RTE
the label word " True", which the paper's protocol gives to *not* entailment (see ``RTE_DEMOS``).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from editscale.errors import ConfigError, DataLoadError


@dataclass(frozen=True)
class Example:
    """One labelled example: the format's fields (e.g. ``{"sentence": ...}``) and a label index."""

    fields: dict[str, str]
    label: int


@dataclass(frozen=True)
class TaskFormat:
    """How a task is written: one block per example, with ``{answer}`` where the label word goes.

    ``label_words[i]`` is the word for label ``i`` as it follows the prompt, leading space included.
    Blocks are joined by ``separator``; the query block ends right before its answer.
    """

    name: str
    block: str
    label_words: tuple[str, ...]
    separator: str = "\n"

    def render_block(self, ex: Example, with_answer: bool) -> str:
        answer = self.label_words[ex.label].strip() if with_answer else ""
        text = self.block.format(answer=answer, **ex.fields)
        return text if with_answer else text.rstrip()


@dataclass(frozen=True)
class FewShotTask:
    """A task to evaluate: its format, in-context demonstrations and the examples to classify."""

    name: str
    format: TaskFormat
    demos: tuple[Example, ...]
    examples: tuple[Example, ...] = field(default=())
    metric: str = "f1"  # "f1" (binary, positive = label 1) or "mcc" additionally reported for CoLA

    @property
    def label_words(self) -> tuple[str, ...]:
        return self.format.label_words

    def prompt(self, ex: Example) -> str:
        """The full few-shot prompt for one example, ending right before its label word."""
        parts = [self.format.render_block(d, with_answer=True) for d in self.demos]
        parts.append(self.format.render_block(ex, with_answer=False))
        return self.format.separator.join(parts)


# The paper's four formats. Label index 1 is the positive class for F1 (positive / Yes / True).
SST2_FORMAT = TaskFormat(
    "sst2", "Review : {sentence}\nSentiment : {answer}", (" negative", " positive"), separator="\n\n"
)
MRPC_FORMAT = TaskFormat(
    "mrpc",
    "Are the sentences paraphrases of each other.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer: {answer}",
    (" No", " Yes"),
    separator="\n\n",
)
COLA_FORMAT = TaskFormat(
    "cola",
    "Is this sentence linguistically acceptable?\nSentence : {sentence}\nAnswer : {answer}",
    (" No", " Yes"),
    separator="\n\n",
)
RTE_FORMAT = TaskFormat(
    "rte", "{premise}\nquestion: {hypothesis} True or False?\nanswer: {answer}", (" False", " True"), separator="\n\n"
)

FORMATS: dict[str, TaskFormat] = {f.name: f for f in (SST2_FORMAT, MRPC_FORMAT, COLA_FORMAT, RTE_FORMAT)}


# The in-context demonstrations as printed in Tables 4-7, in the printed order.
SST2_DEMOS: tuple[Example, ...] = (
    Example({"sentence": "excruciatingly unfunny and pitifully unromantic"}, 0),
    Example({"sentence": "rich veins of funny stuff in this movie"}, 1),
    Example({"sentence": "by far the worst movie of the year"}, 0),
    Example({"sentence": "fashioning an engrossing entertainment out"}, 1),
)
MRPC_DEMOS: tuple[Example, ...] = (
    Example({"sentence1": "Mr McDevitt has been granted control of three crucial aspects of policing in the Solomons.",
             "sentence2": "Mr McDevitt has been granted control of three aspects of policing by Commissioner William "
                          "Morrell."}, 0),
    Example({"sentence1": "The notification was first reported Friday by MSNBC.",
             "sentence2": "MSNBC.com first reported the CIA request on Friday."}, 1),
    Example({"sentence1": "In 2002, Linksys overtook Cisco Systems as the leading wireless equipment vendor, accounting "
                          "for 14.1 percent of revenue.",
             "sentence2": "Rolfe said Linksys overtook Cisco Systems last year as the leading supplier of WLAN "
                          "equipment."}, 0),
    Example({"sentence1": '"The anticipated global sales improvement in the month of June did not materialize", said '
                          "Chief Financial Officer Robert Rivet.",
             "sentence2": '"The anticipated global sales improvement in the month of June did not materialize as we '
                          'had anticipated", the company said.'}, 1),
    Example({"sentence1": "That compared with $ 35.18 million, or 24 cents per share, in the year-ago period.",
             "sentence2": "Earnings were affected by a non-recurring $8 million tax benefit in the year-ago period."}, 0),
    Example({"sentence1": "They had published an advertisement on the Internet on June 10, offering the cargo for sale, "
                          "he added.",
             "sentence2": "On June 10, the ship's owners had published an advertisement on the Internet, offering the "
                          "explosives for sale."}, 1),
)
COLA_DEMOS: tuple[Example, ...] = (
    Example({"sentence": "Bill pushed Harry off the sofa for hours."}, 0),
    Example({"sentence": "Bill floated down the river for hours."}, 1),
    Example({"sentence": "It is important for the more you eat, the more careful you to be."}, 0),
    Example({"sentence": "It is important for you to be more careful, the more you eat."}, 1),
    Example({"sentence": "Mary will believe Susan, and you will Bob."}, 1),
    Example({"sentence": "You will Bob believe."}, 0),
)
# The answers as printed (False, True, False). Read as entailment they are inverted (the first and third
# hypotheses follow from their premises), and so is the authors' code, which scores Hugging Face label 0
# (entailment) as "False". We reproduce the paper's protocol exactly and consistently: entailment is
# " False" (label 0), not_entailment is " True" (label 1), so the demonstrations agree with the evaluated
# labels and RTE figures are comparable with the paper's. F1's positive class for RTE is "True".
RTE_DEMOS: tuple[Example, ...] = (
    Example({"premise": "Cyrus captured Babylon without a battle, and remedied the evils done by previous Assyrian and "
                        "Babylonian rulers by sending prisoners in Babylonia back to their original homelands and "
                        "aiding in the restoration of temples of the gods of various nations.",
             "hypothesis": "Babylon surrendered to Cyrus without going to battle."}, 0),
    Example({"premise": "Successful plaintiffs recovered punitive damages in Texas discrimination cases 53% of the time.",
             "hypothesis": "Legal costs to recover punitive damages are a deductible business expense."}, 1),
    Example({"premise": "The gastric bypass operation, also known as stomach stapling, has become the most common "
                        "surgical procedure for treating obesity.",
             "hypothesis": "Obesity is medically treated."}, 0),
)

DEMOS: dict[str, tuple[Example, ...]] = {"sst2": SST2_DEMOS, "mrpc": MRPC_DEMOS, "cola": COLA_DEMOS, "rte": RTE_DEMOS}


# ---------------------------------------------------------------------------------------------------------
# GLUE dev sets

@dataclass(frozen=True)
class _Layout:
    """One file layout of a GLUE task: which columns hold the format's fields and the label."""

    kind: str  # "GLUE TSV" or "Hugging Face export"
    required: frozenset[str]  # header columns that identify the layout
    fields: dict[str, str]  # format field -> column
    label_column: str
    labels: dict[str, int]  # label as written -> label index (1 = the positive class)
    headerless: tuple[str, ...] = ()  # column names of a file without a header row
    quoted: bool = False  # Hugging Face exports (pandas) quote fields with "..."; GLUE files do not


@dataclass(frozen=True)
class _GlueTask:
    name: str
    folders: tuple[str, ...]
    format: TaskFormat
    demos: tuple[Example, ...]
    layouts: tuple[_Layout, ...]  # the last is the Hugging Face one, also used for hub rows
    metric: str = "f1"


_BINARY = {"0": 0, "1": 1}


def _hf(fields: dict[str, str], labels: dict[str, int] = _BINARY, extra: tuple[str, ...] = ()) -> _Layout:
    required = frozenset([*fields.values(), "label", *extra])
    return _Layout("Hugging Face export", required, fields, "label", labels, quoted=True)


_GLUE: dict[str, _GlueTask] = {
    t.name: t
    for t in (
        _GlueTask("sst2", ("SST-2", "sst2"), SST2_FORMAT, SST2_DEMOS, (
            _Layout("GLUE TSV", frozenset({"sentence", "label"}), {"sentence": "sentence"}, "label", _BINARY),
            _hf({"sentence": "sentence"}, extra=("idx",)),  # GLUE's header is sentence, label: idx tells apart
        )),
        _GlueTask("mrpc", ("MRPC", "mrpc"), MRPC_FORMAT, MRPC_DEMOS, (
            _Layout("GLUE TSV", frozenset({"Quality", "#1 String", "#2 String"}),
                    {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", _BINARY),
            _hf({"sentence1": "sentence1", "sentence2": "sentence2"}),
        )),
        _GlueTask("rte", ("RTE", "rte"), RTE_FORMAT, RTE_DEMOS, (
            _Layout("GLUE TSV", frozenset({"index", "sentence1", "sentence2", "label"}),
                    {"premise": "sentence1", "hypothesis": "sentence2"}, "label",
                    {"entailment": 0, "not_entailment": 1}),  # the paper's (inverted) protocol, see RTE_DEMOS
            _hf({"premise": "sentence1", "hypothesis": "sentence2"}, {"0": 0, "1": 1}),  # 0 = entailment
        )),
        _GlueTask("cola", ("CoLA", "cola"), COLA_FORMAT, COLA_DEMOS, (
            _Layout("GLUE TSV", frozenset(), {"sentence": "sentence"}, "label", _BINARY,
                    headerless=("source", "label", "mark", "sentence")),
            _hf({"sentence": "sentence"}),
        ), metric="mcc"),
    )
}
GLUE_TASKS: tuple[str, ...] = tuple(_GLUE)
_DEV_FILES = ("dev.tsv", "validation.tsv")
_COLA_RAW = ("in_domain_dev.tsv", "out_of_domain_dev.tsv")  # cola_public/raw: GLUE's dev = both


def _glue_spec(name: str) -> _GlueTask:
    if name not in _GLUE:
        raise ConfigError(f"unknown GLUE task {name!r}; valid: {', '.join(GLUE_TASKS)}")
    return _GLUE[name]


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _task_files(spec: _GlueTask, data_dir: Path) -> list[Path]:
    """The dev file(s) of a task under ``data_dir`` (its folder matched case- and dash-insensitively)."""
    wanted = {_norm(f) for f in spec.folders}
    roots = [data_dir] + ([data_dir / "glue"] if (data_dir / "glue").is_dir() else [])  # a data home keeps glue/
    folders = sorted(p for root in roots for p in root.iterdir() if p.is_dir() and _norm(p.name) in wanted)
    for folder in folders:
        for fname in _DEV_FILES:
            if (folder / fname).is_file():
                return [folder / fname]
        if spec.name == "cola" and all((folder / f).is_file() for f in _COLA_RAW):
            return [folder / f for f in _COLA_RAW]
    raise DataLoadError(
        f"no {spec.name} dev set in {data_dir}: expected {data_dir / spec.folders[0] / 'dev.tsv'} "
        "(GLUE TSV, or a Hugging Face export with header and numeric labels)"
    )


def _read_tsv(path: Path, spec: _GlueTask) -> Iterator[tuple[int, dict[str, str], _Layout]]:
    """Rows of one TSV file as (line number, {column: value}, layout), the layout detected from its header."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        first = f.readline().rstrip("\r\n").split("\t")
        header = set(first)
        matching = [lay for lay in spec.layouts if lay.required and lay.required <= header]
        layout = max(matching, key=lambda lay: len(lay.required), default=None)  # the most specific
        if layout is not None:
            columns, line_offset = first, 1
        else:
            layout = next((lay for lay in spec.layouts if len(lay.headerless) == len(first)), None)
            if layout is None:
                expected = "; ".join(
                    f"{lay.kind}: {', '.join(sorted(lay.required)) if lay.required else '(no header)'}"
                    for lay in spec.layouts)
                raise DataLoadError(f"{path}, line 1: unrecognised {spec.name} header {first}; expected {expected}")
            columns, line_offset = list(layout.headerless), 0
            f.seek(0)
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL if layout.quoted else csv.QUOTE_NONE)
        for row in reader:
            if not row:
                continue
            line = reader.line_num + line_offset
            if len(row) != len(columns):
                raise DataLoadError(f"{path}, line {line}: expected {len(columns)} tab-separated columns "
                                    f"({layout.kind} layout), found {len(row)}")
            yield line, dict(zip(columns, row)), layout


def _to_example(row: dict, layout: _Layout, where: str) -> Example:
    raw = str(row[layout.label_column]).strip()
    if raw not in layout.labels:
        raise DataLoadError(f"{where}: label {raw!r} is not one of {', '.join(layout.labels)} "
                            "(test splits have no labels; use the dev/validation split)")
    return Example({k: str(row[col]).strip() for k, col in layout.fields.items()}, layout.labels[raw])


def _load_hub(spec: _GlueTask) -> list[Example]:
    from editscale.model.loading import hub_reachable

    how = (f"pass a data directory (--data-dir DIR) holding {spec.folders[0]}/dev.tsv, in the GLUE TSV layout "
           "or a Hugging Face export")
    try:
        import datasets
    except ImportError:
        raise DataLoadError(f"no data directory given for {spec.name} and the `datasets` package (pip install 'editscale[hub]') is not "
                            f"installed; {how}") from None
    if not hub_reachable():
        raise DataLoadError(f"no data directory given for {spec.name} and the Hugging Face hub cannot be "
                            f"reached (no network); {how}")
    try:
        rows = datasets.load_dataset("nyu-mll/glue", spec.name, split="validation")
    except (OSError, ValueError) as e:  # connection and missing-dataset errors are OSErrors
        raise DataLoadError(f"could not load glue/{spec.name} from the hub ({str(e).splitlines()[0]}); {how}") from None
    layout = spec.layouts[-1]
    return [_to_example(row, layout, f"hub glue/{spec.name}, row {i}") for i, row in enumerate(rows)]


def load_glue(name: str, data_dir: str | Path | None = None) -> list[Example]:
    """All labelled dev examples of a GLUE task (``sst2``, ``mrpc``, ``rte``, ``cola``), in file order.

    ``data_dir`` holds one folder per task (``SST-2/dev.tsv``, ``MRPC/dev.tsv``, ``RTE/dev.tsv``,
    ``CoLA/dev.tsv`` or CoLA's ``in_domain_dev.tsv`` + ``out_of_domain_dev.tsv``; ``validation.tsv`` is
    accepted too), each in the GLUE TSV layout or a Hugging Face export; without it the data home
    ($EDITSCALE_HOME/data/glue, where `editscale data fetch` puts it), else the hub.
    """
    spec = _glue_spec(name)
    if data_dir is None:  # fetched into the data home (`editscale data fetch sst2`), else the hub
        from editscale.data.sources import data_home

        home = data_home()
        try:
            _task_files(spec, home)
            data_dir = home
        except (DataLoadError, OSError):
            return _load_hub(spec)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataLoadError(f"GLUE data directory {root} does not exist")
    files = _task_files(spec, root)
    examples = [_to_example(row, layout, f"{path}, line {line}")
                for path in files for line, row, layout in _read_tsv(path, spec)]
    if not examples:
        raise DataLoadError(f"{spec.name}: no examples in {', '.join(map(str, files))}")
    return examples


def _check_subset_size(n: int, n_labels: int = 2) -> None:
    if n <= 0 or n % n_labels:
        raise ConfigError(f"subset size {n} must be a positive multiple of {n_labels} (balanced classes)")


def balanced_subset(examples: Sequence[Example], n: int, seed: int, n_labels: int = 2) -> tuple[Example, ...]:
    """A seeded sample of ``n`` examples, ``n / n_labels`` of each label, in a seeded order."""
    _check_subset_size(n, n_labels)
    per = n // n_labels
    pools = [[ex for ex in examples if ex.label == label] for label in range(n_labels)]
    smallest = min(range(n_labels), key=lambda label: len(pools[label]))
    if len(pools[smallest]) < per:
        raise ConfigError(f"only {len(pools[smallest])} examples of label {smallest}; a balanced subset of {n} "
                          f"needs {per} of each (use n <= {n_labels * len(pools[smallest])})")
    rng = random.Random(seed)
    chosen = [ex for pool in pools for ex in rng.sample(pool, per)]
    rng.shuffle(chosen)
    return tuple(chosen)


def glue_task(name: str, data_dir: str | Path | None = None, n: int | None = 200, seed: int = 0) -> FewShotTask:
    """A GLUE task with the paper's prompt and demonstrations on a balanced seeded subset (``n=None``: all)."""
    spec = _glue_spec(name)
    if n is not None:
        _check_subset_size(n)
    examples = load_glue(name, data_dir)
    try:
        chosen = tuple(examples) if n is None else balanced_subset(examples, n, seed)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    return FewShotTask(spec.name, spec.format, spec.demos, chosen, metric=spec.metric)


# --------------------------------------------------------------------------------------------------------
# the testbed's synthetic skills, as a built model directory holds them
# --------------------------------------------------------------------------------------------------------
SKILLS_FILE = "skills.json"
SKILL_NAMES = ("sentiment", "paraphrase", "entailment", "acceptability")
SKILL_FORMATS: dict[str, TaskFormat] = {"sentiment": SST2_FORMAT, "paraphrase": MRPC_FORMAT,
                                        "entailment": RTE_FORMAT, "acceptability": COLA_FORMAT}


def skill_tasks(model_dir: str | Path, n: int = 200, seed: int = 0) -> list[FewShotTask]:
    """The four skills of the testbed model in ``model_dir`` as balanced few-shot tasks of ``n`` examples.

    Examples are drawn (seeded) from the model's held-out pool (``skills.json``): ``n // 2`` per label.
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
        tasks.append(FewShotTask(task, SKILL_FORMATS[task], demos, tuple(chosen),
                                 metric="mcc" if task == "acceptability" else "f1"))
    return tasks
