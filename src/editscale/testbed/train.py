"""Build a testbed model: tokenizer, world, data, training on CPU, evaluation, files.

``build(spec, out_dir)`` writes into ``out_dir``:

- the model and tokenizer (``save_pretrained``), so the rest of editscale loads it as any HF causal LM;
- ``world.jsonl``: one ``EditCase`` per fact (see ``World.cases``);
- ``corpus.txt``: generic text for second-moment statistics, one paragraph per line, mostly filler;
- ``skills.json``: the held-out pool of the four downstream skills (``data.downstream.skill_tasks``);
- ``editscale_testbed.json``: the manifest (spec, sizes, config, training time, what the model reached,
  the relations' templates, key statistics and the recommended edit layers).

The training text is a shuffled mix of fact documents (every fact in its edit template and in one trained
frame per epoch, sometimes after a filler sentence), filler paragraphs that mention many background names,
and few-shot skill prompts; held-out templates never occur in it. Documents are packed into rows, but each
attends only to itself, from position 0, as a prompt does when the model is evaluated.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from editscale.data.corpus import FillerGenerator, filler_words
from editscale.data.downstream import skill_tasks
from editscale.data.text_corpus import CORPUS_FILE
from editscale.data.world import World, build_world, render_fact, syllable_text
from editscale.eval.scoring import score_continuations
from editscale.model.loading import MANIFEST_FILE, torch_threads
from editscale.progress import progress_bar
from editscale.testbed import skills
from editscale.testbed.specs import DATA_VERSION, TestbedSpec
from editscale.testbed.tokenizer import EOS, train_tokenizer

WORLD_FILE = "world.jsonl"


def default_threads() -> int:
    """Threads for training: ``EDITSCALE_THREADS``, else torch's current count (the ``editscale`` command sets it
    to the cores other processes leave free: ``editscale.threads``)."""
    env = os.environ.get("EDITSCALE_THREADS")
    if env and env.isdigit() and int(env) >= 1:
        return int(env)
    return torch.get_num_threads()


# --- text ----------------------------------------------------------------------------------------------
def tokenizer_texts(spec: TestbedSpec) -> list[str]:
    """What the tokenizer is trained on: filler, name syllables, every template with every object, skills."""
    from editscale.data.world import make_relations

    texts = FillerGenerator(spec.seed + 11).paragraphs(3000)
    texts += syllable_text(spec.seed, 1500)
    texts.append(" ".join(filler_words()))
    for rel in make_relations(spec.n_relations):
        for t in (*rel.train_templates, *rel.heldout_templates):
            texts.extend(render_fact(t, "Someone", o) for o in rel.objects for _ in range(5))
    texts.extend([" ".join(skills.POSITIVE + skills.NEGATIVE + skills.REVIEW_NOUNS)] * 20)
    for fmt in skills.FORMATS.values():
        texts.extend(fmt.block.format(answer=w.strip(), sentence="", sentence1="", sentence2="", premise="",
                                      hypothesis="") for w in fmt.label_words for _ in range(50))
    return texts


Span = tuple[int, int]
Document = tuple[str, list[Span]]  # text, and the character spans of its answers (objects, label words)


def fact_documents(world: World, rng: random.Random, filler: FillerGenerator) -> list[Document]:
    """One epoch of fact text: every fact in its edit template and in one random trained frame.

    Sentences are grouped one to three to a document, and a third of the documents open with a filler
    sentence, so that facts are seen both at the start of a text and inside one. Each object's span is kept.
    """
    facts = []
    for s in world.subjects:
        for rel in world.relations:
            obj = world.facts[s][rel.relation_id]
            facts.append((rel.edit_template, s, obj))
            facts.append((rng.choice(rel.train_frames), s, obj))
    rng.shuffle(facts)
    docs: list[Document] = []
    i = 0
    while i < len(facts):
        k = rng.randint(1, 3)
        text = filler.sentence() if rng.random() < 1 / 3 else ""
        spans: list[Span] = []
        for template, s, obj in facts[i:i + k]:
            prompt = template.replace("{}", s)
            text = f"{text} {prompt}" if text else prompt
            spans.append((len(text) + 1, len(text) + 1 + len(obj)))
            text = f"{text} {obj}."
        docs.append((text, spans))
        i += k
    return docs


def corpus_lines(world: World, spec: TestbedSpec) -> list[str]:
    """``corpus.txt``: filler paragraphs (with background names) and, after a filler sentence, world facts."""
    rng = random.Random(f"{spec.seed}-corpus")
    filler = FillerGenerator(spec.seed + 5, world.background_names)
    lines = filler.paragraphs(spec.corpus_docs)
    n_facts = int(spec.corpus_fact_share * len(lines))
    for _ in range(n_facts):
        s = rng.choice(world.subjects)
        rel = rng.choice(world.relations)
        fact = render_fact(rng.choice(rel.train_templates), s, world.facts[s][rel.relation_id])
        lines.insert(rng.randrange(len(lines) + 1), filler.sentence() + " " + fact)
    return lines


class DataStream:
    """Packed training rows: shuffled documents joined by EOS, each row starting at a document start."""

    def __init__(self, spec: TestbedSpec, world: World, tokenizer) -> None:
        self.spec, self.world, self.tok = spec, world, tokenizer
        self.rng = random.Random(f"{spec.seed}-stream")
        self.filler = FillerGenerator(spec.seed + 1, world.background_names)
        self.skills = skills.SkillGenerator(world, spec.seed, "train")
        self.eos = tokenizer.convert_tokens_to_ids(EOS)
        self.epoch = 0

    def epoch_documents(self) -> list[Document]:
        docs = fact_documents(self.world, self.rng, self.filler)
        docs += [(p, []) for p in self.filler.paragraphs(self.spec.filler_docs)]
        names = skills.SKILL_NAMES
        docs += [self.skills.training_text(names[i % len(names)]) for i in range(self.spec.skill_docs)]
        docs += [self.skills.training_text(("paraphrase", "entailment")[i % 2]) for i in range(self.spec.pair_docs)]
        self.rng.shuffle(docs)
        return docs

    def rows(self) -> Iterator[tuple[list[int], list[float], list[int]]]:
        """(token ids, loss weights, positions) rows of at most ``seq_len`` tokens, forever (epoch after epoch).

        Answer tokens (objects, label words) weigh ``spec.answer_weight``, every other token 1. Positions
        restart at 0 with each document, which is how the model sees a prompt when it is evaluated; training
        passes them as ``position_ids`` so each document attends only to itself (see ``train_model``).
        """
        n = self.spec.seq_len
        while True:
            self.epoch += 1
            docs = self.epoch_documents()
            enc = self.tok([text for text, _ in docs], return_offsets_mapping=True)
            row: list[int] = []
            weights: list[float] = []
            positions: list[int] = []
            for ids, offsets, (_, spans) in zip(enc["input_ids"], enc["offset_mapping"], docs):
                w = [self.spec.answer_weight if any(s < b and e > a for a, b in spans) else 1.0
                     for s, e in offsets]
                ids, w = ids[: n - 1] + [self.eos], w[: n - 1] + [1.0]
                if len(row) + len(ids) > n:
                    yield row, weights, positions
                    row, weights, positions = [], [], []
                row.extend(ids)
                weights.extend(w)
                positions.extend(range(len(ids)))
            if row:
                yield row, weights, positions

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, weights, position_ids) batches, right-padded; padding weighs 0 and is a document of its
        own."""
        rows = self.rows()
        while True:
            chunk = [next(rows) for _ in range(self.spec.batch_size)]
            width = max(len(r) for r, _, _ in chunk)
            ids = torch.full((len(chunk), width), self.eos, dtype=torch.long)
            weights = torch.zeros((len(chunk), width))
            positions = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (r, w, pos) in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(r)
                weights[i, : len(r)] = torch.tensor(w)
                positions[i] = torch.tensor(pos + list(range(width - len(r))))
            yield ids, weights, positions


# --- model ---------------------------------------------------------------------------------------------
def make_model(spec: TestbedSpec, eos_id: int) -> nn.Module:
    """A freshly initialised GPT-2-style (or Llama-style) model of the spec's shape."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    common = {"vocab_size": spec.vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id,
              "pad_token_id": eos_id, "tie_word_embeddings": True, "initializer_range": spec.init_std}
    if spec.arch == "llama":
        cfg = LlamaConfig(hidden_size=spec.d_model, intermediate_size=spec.d_mlp, num_hidden_layers=spec.n_layers,
                          num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_heads,
                          max_position_embeddings=spec.n_positions, hidden_act=spec.activation, **common)
        return LlamaForCausalLM(cfg)
    cfg = GPT2Config(n_embd=spec.d_model, n_inner=spec.d_mlp, n_layer=spec.n_layers, n_head=spec.n_heads,
                     n_positions=spec.n_positions, activation_function=spec.activation, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, **common)
    return GPT2LMHeadModel(cfg)


def lr_at(step: int, spec: TestbedSpec) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_model(model: nn.Module, stream: DataStream, spec: TestbedSpec, progress: bool | None = None,
                on_step: Callable[[int, float], None] | None = None) -> float:
    """Train in place for ``spec.steps`` steps; returns the final smoothed loss."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.98))
    model.train()
    smooth = float("nan")
    batches = stream.batches()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no "pass an attention_mask" warning: position_ids mask the documents
    try:
        with progress_bar(f"training testbed:{spec.name}", spec.steps, progress) as advance:
            for step in range(spec.steps):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, spec)
                ids, weights, positions = next(batches)
                # position_ids that restart at each document, with no attention mask and no cache, make
                # transformers mask attention across documents (packed sequences): each sees only itself
                logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, :-1]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
                w = weights[:, 1:].reshape(-1)
                loss = (nll * w).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                value = float(loss.detach())
                smooth = value if math.isnan(smooth) else 0.95 * smooth + 0.05 * value
                advance(1, status=f"loss {smooth:.3f} epoch {stream.epoch}")
                if on_step is not None:
                    on_step(step, smooth)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    return smooth


# --- evaluation ----------------------------------------------------------------------------------------
def recall(model: nn.Module, tokenizer, prompts: list[tuple[str, str]], limit: int, seed: int) -> float:
    """Fraction of (prompt, object) pairs whose object is the greedy continuation (every token argmax)."""
    if len(prompts) > limit:
        prompts = random.Random(seed).sample(prompts, limit)
    scores = score_continuations(model, tokenizer, [p for p, _ in prompts], [o for _, o in prompts], batch_size=128)
    return float(scores.all_argmax.float().mean())


def evaluate(model: nn.Module, tokenizer, world: World, spec: TestbedSpec, limit: int = 3000) -> dict[str, float]:
    edit_prompts = [(r.edit_template.replace("{}", s), world.facts[s][r.relation_id])
                    for s in world.subjects for r in world.relations]
    return {
        "recall_train": recall(model, tokenizer, world.fact_prompts("train"), limit, spec.seed),
        "recall_heldout": recall(model, tokenizer, world.fact_prompts("heldout"), limit, spec.seed),
        "recall_edit_template": recall(model, tokenizer, edit_prompts, limit, spec.seed),
    }


def skill_scores(model: nn.Module, tokenizer, model_dir: Path) -> dict[str, float]:
    """F1 of each skill on 200 held-out examples."""
    from editscale.eval.downstream import DownstreamSuite

    tasks = skill_tasks(model_dir, n=200, seed=0)
    results = DownstreamSuite(tasks, tokenizer).evaluate(model)
    return {name: round(r["f1"], 4) for name, r in results.items()}


# --- the whole build -----------------------------------------------------------------------------------
def build(spec: TestbedSpec, out_dir: str | Path, *, threads: int | None = None,
          progress: bool | None = None) -> dict:
    """Build the testbed model of ``spec`` into ``out_dir`` (which must exist); returns the manifest."""
    from editscale.testbed.diagnostics import key_statistics

    out = Path(out_dir)
    threads = threads or default_threads()
    with torch_threads(threads):
        t0 = time.perf_counter()
        random.seed(spec.seed)
        tok = train_tokenizer(tokenizer_texts(spec), spec.vocab_size)
        world = build_world(spec.n_subjects, spec.n_relations, spec.seed, n_skill_entities=spec.n_skill_entities,
                            n_background_names=spec.n_background_names, tokenize=tok.tokenize)
        model = make_model(spec, tok.eos_token_id)
        stream = DataStream(spec, world, tok)
        t1 = time.perf_counter()
        loss = train_model(model, stream, spec, progress)
        t2 = time.perf_counter()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar has run; no "Writing model shards" line after it
        model.save_pretrained(out)
        tok.save_pretrained(out)
        with open(out / WORLD_FILE, "w") as f:
            f.writelines(json.dumps(case.to_dict()) + "\n" for case in world.cases())
        corpus = corpus_lines(world, spec)
        (out / CORPUS_FILE).write_text("\n".join(corpus) + "\n")
        skills.write_skill_pool(out, world, spec.seed)
        reached = evaluate(model, tok, world, spec)
        skill_f1 = skill_scores(model, tok, out)
        keys = key_statistics(model, tok, world, corpus, spec)
        manifest = {
            "name": spec.name,
            "spec_hash": spec.hash,
            "data_version": DATA_VERSION,
            "seed": spec.seed,
            "spec": spec.to_dict(),
            "sizes": {"subjects": len(world.subjects), "relations": len(world.relations),
                      "facts": len(world.subjects) * len(world.relations), "cases": len(world.subjects)
                      * len(world.relations), "parameters": sum(p.numel() for p in model.parameters()),
                      "epochs": stream.epoch, "corpus_lines": len(corpus)},
            "config": model.config.to_dict(),
            "threads": threads,
            "train_seconds": round(t2 - t1, 1),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": round(loss, 4),
            **{k: round(v, 4) for k, v in reached.items()},
            "skills": skill_f1,
            "rome_layer": spec.rome_layer,
            "memit_layers": list(spec.memit_layers),
            "key_statistics": keys,
            "relations": {r.relation_id: {"edit_template": r.edit_template, "train_templates": list(r.train_templates),
                                          "heldout_templates": list(r.heldout_templates), "objects": list(r.objects)}
                          for r in world.relations},
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        }
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        return manifest


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
