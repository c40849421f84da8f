"""Few-shot classification tasks in the formats of Gupta et al. 2024 (appendix A.3, Tables 4-7).

A task is labelled examples + a few-shot format + label words. The evaluator (``eval/downstream.py``)
classifies an example by comparing the model's probabilities of the label words after the prompt.
The same formats serve the four GLUE tasks and the testbed's synthetic twins (``testbed/skills.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
SST2_FORMAT = TaskFormat("sst2", "Review : {sentence}\nSentiment : {answer}", (" negative", " positive"))
MRPC_FORMAT = TaskFormat(
    "mrpc",
    "Are the sentences paraphrases of each other. Sentence 1: {sentence1} Sentence 2: {sentence2} Answer: {answer}",
    (" No", " Yes"),
)
COLA_FORMAT = TaskFormat(
    "cola", "Is this sentence linguistically acceptable?\nSentence : {sentence}\nAnswer : {answer}", (" No", " Yes")
)
RTE_FORMAT = TaskFormat("rte", "{premise} question: {hypothesis} True or False? answer: {answer}", (" False", " True"))

FORMATS: dict[str, TaskFormat] = {f.name: f for f in (SST2_FORMAT, MRPC_FORMAT, COLA_FORMAT, RTE_FORMAT)}
