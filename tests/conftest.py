"""Shared fixtures: an isolated PROMPTINTERN_HOME and a tiny random Llama with a word-level tokenizer."""

from __future__ import annotations

import os
import string

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes caches and stores under its own temporary PROMPTINTERN_HOME."""
    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path_factory.mktemp("home")))


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    """A character-level fast tokenizer with ChatML special tokens (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random LlamaForCausalLM + tokenizer, loadable by path like any HF checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _bwrap_error() -> str:
    from promptintern.sandbox import SandboxUnavailable, get_backend

    try:
        get_backend("bwrap")
    except SandboxUnavailable as exc:
        return str(exc)
    return ""


BWRAP_ERROR = _bwrap_error()
#: Sandbox tests skip where bubblewrap cannot run, except under CI (CI=true), where they must run and fail loudly.
needs_bwrap = pytest.mark.skipif(
    bool(BWRAP_ERROR) and not os.environ.get("CI"), reason=f"bubblewrap unusable: {BWRAP_ERROR}"
)
