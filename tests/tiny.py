"""Tiny models and tokenizers for tests: built from configs, no downloads, deterministic."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Danielle Darrieux speaks French and lives in Paris.",
    "LeBron James plays the sport of basketball in the city of Los Angeles.",
    "The mother tongue of Toko Yasuda is Japanese, and she plays the guitar.",
    "Review : a wonderful film\nSentiment : positive",
] * 20


def bpe_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 conventions: leading spaces belong to words)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def random_model(family: str, vocab_size: int = 400, layers: int = 3, seed: int = 0) -> nn.Module:
    """A small random-weight causal LM of the given family (gpt2, gptj, gpt_neox, llama, mistral, qwen2,
    gemma3_text)."""
    import transformers as T

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = T.GPT2Config(n_layer=layers, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=128)
    elif family == "gptj":
        cfg = T.GPTJConfig(n_layer=layers, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=128, rotary_dim=8)
    elif family == "gpt_neox":
        cfg = T.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                              vocab_size=vocab_size, max_position_embeddings=128)
    elif family == "llama":
        cfg = T.LlamaConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                            intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=128)
    elif family in ("mistral", "qwen2"):
        config_cls = T.MistralConfig if family == "mistral" else T.Qwen2Config
        cfg = config_cls(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=128)
    elif family == "gemma3_text":
        cfg = T.Gemma3TextConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                 head_dim=16, intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=128,
                                 query_pre_attn_scalar=16, sliding_window=64)
    else:
        raise ValueError(family)
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = 0
    model = T.AutoModelForCausalLM.from_config(cfg)
    return model.eval()


FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` (+ <pad>), for hand-computable scores."""
    vocab = {"<pad>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


class BigramLM(nn.Module):
    """A causal LM whose next-token distribution depends only on the current token: ``probs[cur]``."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(probs.log())
        self.config = SimpleNamespace(max_position_embeddings=1024)

    def forward(self, input_ids, attention_mask=None, **cache_and_positions):
        """The next-token table of each position; a key/value cache is not needed (each step sees only the
        current token), so greedy and sampled decoding work one token at a time."""
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)
