"""Few-shot downstream evaluation: GLUE loaders, the paper's prompts, metrics, the evaluator and the CLI."""

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

import editscale.eval.downstream as ds
from editscale.data.downstream import (
    COLA_FORMAT,
    DEMOS,
    FORMATS,
    GLUE_TASKS,
    MRPC_FORMAT,
    RTE_FORMAT,
    SST2_FORMAT,
    Example,
    FewShotTask,
    TaskFormat,
    balanced_subset,
    glue_task,
    load_glue,
)
from editscale.errors import ConfigError, DataLoadError
from editscale.eval.downstream import (
    DownstreamSuite,
    classification_metrics,
    evaluate_task,
    evaluate_tasks,
    parse_task_names,
    prepare_suite,
)
from editscale.eval.scoring import score_continuations

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "SST-2" / "dev.tsv").is_file(),
                                reason=f"GLUE dev sets not found in {GLUE_DIR} (shared data absent)")

# ----------------------------------------------------------------------------------------------- helpers


def paper_task(name: str, examples=()) -> FewShotTask:
    return FewShotTask(name, FORMATS[name], DEMOS[name], tuple(examples))


@pytest.fixture(scope="module")
def tok():
    """Byte-level BPE trained on the paper's prompts: the label words are single tokens."""
    corpus = [paper_task(n).prompt(DEMOS[n][0]) for n in GLUE_TASKS] * 3 + [" positive negative Yes No True False"] * 20
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_lm(vocab: int, family: str = "gpt2", seed: int = 0):
    torch.manual_seed(seed)
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if family == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=2048, **special)
    else:
        cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=64, vocab_size=vocab, max_position_embeddings=2048, **special)
    return AutoModelForCausalLM.from_config(cfg).eval()


WORDS = ["film", "story", "actor", "scene", "plot", "music", "ending", "script", "cast", "camera", "moment",
         "picture", "dialogue", "director", "humor", "pace", "drama", "tone"]


def synthetic_sst2(n: int, seed: int = 0) -> FewShotTask:
    """A balanced SST-2-format task of short random reviews (labels are arbitrary: nothing to learn)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        words = [WORDS[j] for j in torch.randint(len(WORDS), (int(torch.randint(3, 9, (1,), generator=g)),),
                                                 generator=g)]
        examples.append(Example({"sentence": " ".join(words)}, i % 2))
    return paper_task("sst2", examples)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ loaders


@needs_glue
@pytest.mark.parametrize(("name", "total", "positive", "negative"),
                         [("sst2", 872, 444, 428), ("mrpc", 408, 279, 129), ("rte", 277, 131, 146),
                          ("cola", 1043, 719, 324)])
def test_glue_dev_sets_counts_and_balance(name, total, positive, negative):
    examples = load_glue(name, GLUE_DIR)
    assert len(examples) == total
    assert Counter(ex.label for ex in examples) == {1: positive, 0: negative}
    assert all(set(ex.fields) == set(re.findall(r"{(\w+)}", FORMATS[name].block)) - {"answer"} for ex in examples)
    assert all(v and v == v.strip() for ex in examples for v in ex.fields.values())


@needs_glue
def test_glue_first_rows_and_rte_mapping():
    sst2 = load_glue("sst2", GLUE_DIR)[0]
    assert sst2 == Example({"sentence": "it 's a charming and often affecting journey ."}, 1)
    mrpc = load_glue("mrpc", GLUE_DIR)[0]  # an unbalanced quote: GLUE files are read without quoting
    assert mrpc.fields["sentence2"].startswith('"The foodservice pie business') and mrpc.label == 1
    # Hugging Face export: label 0 = entailment -> " False" (0), as the paper's protocol (see RTE_DEMOS)
    rte = load_glue("rte", GLUE_DIR)
    assert rte[0].fields["hypothesis"] == "Christopher Reeve had an accident." and rte[0].label == 1
    assert rte[1].fields["hypothesis"] == "Bacteria is winning the war against antibiotics." and rte[1].label == 0
    assert any('""' not in ex.fields["premise"] and '"' in ex.fields["premise"] for ex in rte)  # quotes undone


@needs_glue
def test_balanced_seeded_subsets():
    a = glue_task("rte", GLUE_DIR, n=200, seed=0)
    assert len(a.examples) == 200 and Counter(ex.label for ex in a.examples) == {0: 100, 1: 100}
    assert a.examples == glue_task("rte", GLUE_DIR, n=200, seed=0).examples
    assert a.examples != glue_task("rte", GLUE_DIR, n=200, seed=1).examples
    assert len(glue_task("cola", GLUE_DIR, n=None).examples) == 1043
    with pytest.raises(ConfigError, match=r"rte: only 131 examples of label 1.*n <= 262"):
        glue_task("rte", GLUE_DIR, n=300)


def test_balanced_subset_rejects_odd_sizes():
    with pytest.raises(ConfigError, match="multiple of 2"):
        balanced_subset([Example({}, 0), Example({}, 1)], 3, seed=0)


def test_hugging_face_export_and_glue_layouts(tmp_path):
    write(tmp_path / "sst2" / "validation.tsv",  # HF export (pandas): quoted fields, idx column
          'sentence\tlabel\tidx\n"a ""quoted""\tfield"\t1\t0\nplain one \t0\t1\n')
    write(tmp_path / "MRPC" / "dev.tsv", "sentence1\tsentence2\tlabel\tidx\nA.\tB.\t1\t0\nC.\tD.\t0\t1\n")
    write(tmp_path / "RTE" / "dev.tsv",  # the GLUE original: string labels
          "index\tsentence1\tsentence2\tlabel\n0\tP one.\tH one.\tentailment\n1\tP two.\tH two.\tnot_entailment\n")
    write(tmp_path / "CoLA" / "in_domain_dev.tsv", "gj04\t1\t\tGood one.\n")  # cola_public/raw, no header
    write(tmp_path / "CoLA" / "out_of_domain_dev.tsv", "clc95\t0\t*\tBad one the.\n")
    assert load_glue("sst2", tmp_path) == [Example({"sentence": 'a "quoted"\tfield'}, 1),
                                           Example({"sentence": "plain one"}, 0)]
    assert [ex.label for ex in load_glue("mrpc", tmp_path)] == [1, 0]
    # entailment -> " False" (0), the paper's protocol
    assert load_glue("rte", tmp_path)[0] == Example({"premise": "P one.", "hypothesis": "H one."}, 0)
    assert [ex.label for ex in load_glue("rte", tmp_path)] == [0, 1]
    assert load_glue("cola", tmp_path) == [Example({"sentence": "Good one."}, 1),
                                           Example({"sentence": "Bad one the."}, 0)]


def test_malformed_files_name_file_and_line(tmp_path):
    bad = write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(DataLoadError, match=rf"{re.escape(str(bad))}, line 3: expected 2 tab-separated columns"):
        load_glue("sst2", tmp_path)
    write(bad, "sentence\tlabel\ngood\t1\nfine\tyes\n")
    with pytest.raises(DataLoadError, match=r"dev.tsv, line 3: label 'yes' is not one of 0, 1"):
        load_glue("sst2", tmp_path)
    write(tmp_path / "MRPC" / "dev.tsv", "id\ttext\n1\tx\n")
    with pytest.raises(DataLoadError, match=r"MRPC/dev.tsv, line 1: unrecognised mrpc header"):
        load_glue("mrpc", tmp_path)


def test_missing_data_errors(tmp_path, monkeypatch):
    with pytest.raises(DataLoadError, match="does not exist"):
        load_glue("sst2", tmp_path / "nope")
    with pytest.raises(DataLoadError, match=r"no cola dev set in .*CoLA/dev.tsv"):
        load_glue("cola", tmp_path)
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path / "home"))  # nothing fetched into the data home
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataLoadError, match=r"`datasets` package \(pip install 'editscale\[hub\]'\) is not installed; "
                                            "pass a data directory"):
        load_glue("sst2")
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.setattr("editscale.model.loading.hub_reachable", lambda: False)
    with pytest.raises(DataLoadError, match=r"hub cannot be reached \(no network\); pass a data directory"):
        load_glue("sst2")


def test_hub_rows_use_the_hugging_face_labels(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"sentence1": "P.", "sentence2": "H.", "label": 0, "idx": 0},
                {"sentence1": "Q.", "sentence2": "I.", "label": 1, "idx": 1}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr("editscale.model.loading.hub_reachable", lambda: True)
    assert load_glue("rte") == [Example({"premise": "P.", "hypothesis": "H."}, 0),
                                Example({"premise": "Q.", "hypothesis": "I."}, 1)]
    assert calls == [("nyu-mll/glue", "rte", "validation")]


# ---------------------------------------------------------------------------------------- prompts vs paper

# Tables 4-7 as printed (whitespace collapsed; the MRPC dollar signs without the LaTeX backslash).
PAPER = {
    "sst2": "Review : excruciatingly unfunny and pitifully unromantic Sentiment : negative Review : rich veins of "
            "funny stuff in this movie Sentiment : positive Review : by far the worst movie of the year Sentiment : "
            "negative Review : fashioning an engrossing entertainment out Sentiment : positive Review : INPUT "
            "SENTENCE Sentiment :",
    "mrpc": "Are the sentences paraphrases of each other. Sentence 1: Mr McDevitt has been granted control of three "
            "crucial aspects of policing in the Solomons. Sentence 2: Mr McDevitt has been granted control of three "
            "aspects of policing by Commissioner William Morrell. Answer: No Are the sentences paraphrases of each "
            "other. Sentence 1: The notification was first reported Friday by MSNBC. Sentence 2: MSNBC.com first "
            "reported the CIA request on Friday. Answer: Yes Are the sentences paraphrases of each other. Sentence "
            "1: In 2002, Linksys overtook Cisco Systems as the leading wireless equipment vendor, accounting for "
            "14.1 percent of revenue. Sentence 2: Rolfe said Linksys overtook Cisco Systems last year as the "
            "leading supplier of WLAN equipment. Answer: No Are the sentences paraphrases of each other. Sentence "
            '1: "The anticipated global sales improvement in the month of June did not materialize", said Chief '
            'Financial Officer Robert Rivet. Sentence 2: "The anticipated global sales improvement in the month of '
            'June did not materialize as we had anticipated", the company said. Answer: Yes Are the sentences '
            "paraphrases of each other. Sentence 1: That compared with $ 35.18 million, or 24 cents per share, in "
            "the year-ago period. Sentence 2: Earnings were affected by a non-recurring $8 million tax benefit in "
            "the year-ago period. Answer: No Are the sentences paraphrases of each other. Sentence 1: They had "
            "published an advertisement on the Internet on June 10, offering the cargo for sale, he added. "
            "Sentence 2: On June 10, the ship's owners had published an advertisement on the Internet, offering "
            "the explosives for sale. Answer: Yes",
    "cola": "Is this sentence linguistically acceptable? Sentence : Bill pushed Harry off the sofa for hours. "
            "Answer : No Is this sentence linguistically acceptable? Sentence : Bill floated down the river for "
            "hours. Answer : Yes Is this sentence linguistically acceptable? Sentence : It is important for the "
            "more you eat, the more careful you to be. Answer : No Is this sentence linguistically acceptable? "
            "Sentence : It is important for you to be more careful, the more you eat. Answer : Yes Is this "
            "sentence linguistically acceptable? Sentence : Mary will believe Susan, and you will Bob. Answer : "
            "Yes Is this sentence linguistically acceptable? Sentence : You will Bob believe. Answer : No Is this "
            "sentence linguistically acceptable? Sentence : INPUT SENTENCE Answer :",
    "rte": "Cyrus captured Babylon without a battle, and remedied the evils done by previous Assyrian and "
           "Babylonian rulers by sending prisoners in Babylonia back to their original homelands and aiding in the "
           "restoration of temples of the gods of various nations. question: Babylon surrendered to Cyrus without "
           "going to battle. True or False? answer: False Successful plaintiffs recovered punitive damages in Texas "
           "discrimination cases 53% of the time. question: Legal costs to recover punitive damages are a "
           "deductible business expense. True or False? answer: True The gastric bypass operation, also known as "
           "stomach stapling, has become the most common surgical procedure for treating obesity. question: "
           "Obesity is medically treated. True or False? answer: False",
}
QUERIES = {
    "sst2": Example({"sentence": "INPUT SENTENCE"}, 1),
    "cola": Example({"sentence": "INPUT SENTENCE"}, 1),
    "mrpc": Example({"sentence1": "Sentence A.", "sentence2": "Sentence B."}, 1),
    "rte": Example({"premise": "STATEMENT", "hypothesis": "Question"}, 1),
}


def test_sst2_prompt_exactly():
    prompt = paper_task("sst2", []).prompt(QUERIES["sst2"])
    assert prompt == (
        "Review : excruciatingly unfunny and pitifully unromantic\nSentiment : negative\n\n"
        "Review : rich veins of funny stuff in this movie\nSentiment : positive\n\n"
        "Review : by far the worst movie of the year\nSentiment : negative\n\n"
        "Review : fashioning an engrossing entertainment out\nSentiment : positive\n\n"
        "Review : INPUT SENTENCE\nSentiment :"
    )


@pytest.mark.parametrize("name", GLUE_TASKS)
def test_prompts_match_the_papers_tables(name):
    prompt = paper_task(name, []).prompt(QUERIES[name])
    flat = " ".join(prompt.split())
    expected = {
        "sst2": PAPER["sst2"],
        "cola": PAPER["cola"],
        "mrpc": PAPER["mrpc"] + " Are the sentences paraphrases of each other. Sentence 1: Sentence A. "
                                "Sentence 2: Sentence B. Answer:",
        "rte": PAPER["rte"] + " STATEMENT question: Question True or False? answer:",
    }[name]
    assert flat == expected
    assert "\n\n" in prompt and not prompt.endswith((" ", "\n"))


def test_formats_label_words():
    assert SST2_FORMAT.label_words == (" negative", " positive")
    assert MRPC_FORMAT.label_words == COLA_FORMAT.label_words == (" No", " Yes")
    assert RTE_FORMAT.label_words == (" False", " True")


# ------------------------------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_made_case():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 1, 0, 0, 1, 0, 1, 1]  # TP 3, FN 1, FP 2, TN 2
    m = classification_metrics(labels, preds)
    assert m["n"] == 8
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["mcc"] == pytest.approx((3 * 2 - 2 * 1) / (5 * 4 * 4 * 3) ** 0.5)
    constant = classification_metrics([1, 0, 1, 0], [0, 0, 0, 0])
    assert constant == {"f1": 0.0, "accuracy": 0.5, "mcc": 0.0, "n": 4}


def test_task_names():
    assert parse_task_names("sst2, cola,sst2") == ["sst2", "cola"]
    with pytest.raises(ConfigError, match=r"unknown task 'qnli'; valid tasks: sst2, mrpc, rte, cola, skills, perplexity, known-facts"):
        parse_task_names("sst2,qnli")
    with pytest.raises(ConfigError, match="no tasks given"):
        parse_task_names(" , ")


# ----------------------------------------------------------------------------------------------- evaluator


def reference_logprobs(model, tok, task: FewShotTask) -> torch.Tensor:
    prompts = [task.prompt(ex) for ex in task.examples]
    words = task.label_words
    s = score_continuations(model, tok, [p for p in prompts for _ in words], [w for _ in prompts for w in words])
    return s.logprob.float().view(len(prompts), len(words))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prefix_path_matches_full_scoring(tok, family, monkeypatch):
    model = tiny_lm(len(tok), family)
    task = synthetic_sst2(10)
    suite = DownstreamSuite([task], tok, batch_size=3)
    with monkeypatch.context() as m:  # single-token label words: no continuation scoring at all
        m.setattr(ds, "score_continuations", None)
        got = suite.label_logprobs(model)["sst2"]
    torch.testing.assert_close(got, reference_logprobs(model, tok, task), atol=1e-5, rtol=1e-5)
    # prepared once, evaluated again on changed weights
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    again = suite.label_logprobs(model)["sst2"]
    torch.testing.assert_close(again, reference_logprobs(model, tok, task), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(again, got)


def test_a_forward_without_mask_support_falls_back_on_a_fresh_cache(tok):
    """The last-position logits come through a logits_to_keep mask; a transformers version that fails on it
    (after its layers appended to the key/value cache) is retried on a fresh copy of the shared prefix's cache."""
    model = tiny_lm(len(tok), "llama")
    task = synthetic_sst2(7)
    forward, failed = model.forward, []

    def without_masks(*args, **kwargs):
        out = forward(*args, **kwargs)  # the cache is extended before the head fails
        if torch.is_tensor(kwargs.get("logits_to_keep")):
            failed.append(1)
            raise IndexError("too many indices for tensor")
        return out

    model.forward = without_masks
    got = DownstreamSuite([task], tok, batch_size=3).label_logprobs(model)["sst2"]
    model.forward = forward
    assert len(failed) == 3  # every batch tried the mask first
    torch.testing.assert_close(got, reference_logprobs(model, tok, task), atol=1e-5, rtol=1e-5)


def test_multi_token_label_words_fall_back_to_continuations(tok):
    model = tiny_lm(len(tok))
    fmt = TaskFormat("odd", SST2_FORMAT.block, (" zqxj", " vwkq"), separator="\n\n")
    task = FewShotTask("odd", fmt, (), synthetic_sst2(6).examples)
    got = DownstreamSuite([task], tok, batch_size=4).label_logprobs(model)["odd"]
    torch.testing.assert_close(got, reference_logprobs(model, tok, task))


def test_random_model_scores_near_chance(tok):
    model = tiny_lm(len(tok), seed=1)
    result = evaluate_task(model, tok, synthetic_sst2(200, seed=3), batch_size=50)
    assert result["n"] == 200
    assert 0.35 <= result["accuracy"] <= 0.65
    assert result["f1"] <= 0.75 and abs(result["mcc"]) < 0.3


def test_prompts_longer_than_the_context_are_refused(tok):
    model = tiny_lm(len(tok))
    model.config.n_positions = 16
    with pytest.raises(ConfigError, match=r"task 'sst2': prompts reach \d+ tokens but the model's context is 16"):
        evaluate_task(model, tok, synthetic_sst2(2))


def test_evaluate_tasks_by_name_and_object(tok, tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\n" + "".join(
        f"{' '.join(WORDS[i:i + 4])}\t{i % 2}\n" for i in range(12)))
    mine = FewShotTask("mine", SST2_FORMAT, DEMOS["sst2"], synthetic_sst2(4).examples)
    out = evaluate_tasks(tiny_lm(len(tok)), tok, ["sst2", mine], data_dir=tmp_path, n=8)
    assert list(out) == ["sst2", "mine"]
    assert [r["n"] for r in out.values()] == [8, 4]
    assert set(out["sst2"]) == {"f1", "accuracy", "mcc", "n"}


def test_duplicate_names_and_skills_without_model_dir(tok):
    with pytest.raises(ConfigError, match="duplicate task names"):
        DownstreamSuite([synthetic_sst2(2), synthetic_sst2(2)], tok)
    with pytest.raises(ConfigError, match="task 'skills' needs the testbed model's directory"):
        prepare_suite("skills", tokenizer=tok)


# ----------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("lm")
    tiny_lm(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture()
def glue_dir(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\n" + "".join(
        f"{' '.join(WORDS[i:i + 3])}\t{i % 2}\n" for i in range(10)))
    write(tmp_path / "RTE" / "dev.tsv", "sentence1\tsentence2\tlabel\tidx\n" + "".join(
        f"The {w} is here.\tA {w} exists.\t{i % 2}\t{i}\n" for i, w in enumerate(WORDS[:10])))
    return tmp_path


def test_cli_json(cli, model_dir, glue_dir):
    code, out, err = cli("downstream", "--model", str(model_dir), "--tasks", "sst2,rte",
                         "--data-dir", str(glue_dir), "--n", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert list(result) == ["sst2", "rte"]
    assert all(r["n"] == 4 and 0 <= r["f1"] <= 1 and 0 <= r["accuracy"] <= 1 for r in result.values())


def test_cli_table_and_skills(cli, model_dir, monkeypatch):
    calls = []

    def skill_tasks(path, n=200, seed=0):
        calls.append((path, n, seed))
        return [FewShotTask("sentiment", SST2_FORMAT, DEMOS["sst2"], synthetic_sst2(n).examples)]

    monkeypatch.setattr(ds, "skill_tasks", skill_tasks)
    code, out, err = cli("downstream", "--model", str(model_dir), "--tasks", "skills", "--n", "6")
    assert code == 0, err
    assert calls == [(str(model_dir), 6, 0)]
    assert "sentiment" in out and "F1" in out and "MCC" in out


def test_cli_errors(cli, tmp_path):
    code, out, err = cli("downstream", "--model", "unused", "--tasks", "sst2,squad")
    assert code == 2 and out == ""
    assert err.strip() == "error: unknown task 'squad'; valid tasks: sst2, mrpc, rte, cola, skills, perplexity, known-facts"
    code, _, err = cli("downstream", "--model", "unused", "--tasks", "cola", "--data-dir", str(tmp_path))
    assert code == 2 and err.startswith("error: no cola dev set in") and err.count("\n") == 1
    code, _, err = cli("downstream", "--model", "unused", "--n", "3", "--data-dir", str(tmp_path))
    assert code == 2 and "multiple of 2" in err


def test_glue_reads_the_data_home_before_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSCALE_HOME", str(tmp_path))
    folder = tmp_path / "data" / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull one\t0\n")
    monkeypatch.setattr("editscale.model.loading.hub_reachable", lambda: False)
    assert [ex.label for ex in load_glue("sst2")] == [1, 0]
