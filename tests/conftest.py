"""Shared fixtures: an isolated PROMPTINTERN_HOME and a tiny random Llama with a word-level tokenizer."""

from __future__ import annotations

import os
import string

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes caches and stores under its own temporary PROMPTINTERN_HOME.

    Only ``cache/datasets`` (derived splits such as the NL2Bash rebuild, keyed by a hash of their sources and
    code) is shared by the session, so the 10-20 s rebuild happens once.
    """
    home = tmp_path_factory.mktemp("home")
    shared = tmp_path_factory.getbasetemp() / "shared-datasets-cache"
    shared.mkdir(exist_ok=True)
    (home / "cache").mkdir()
    (home / "cache" / "datasets").symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv("PROMPTINTERN_HOME", str(home))


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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A saved tiny random 2-label BertForTokenClassification with a char-level WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert-tokclf")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace()]
    words = ["the", "function", "Python", "list", "Returns", "string", "sorted"]
    vocab = {t: i for i, t in enumerate(specials + chars + [f"##{c}" for c in chars] + words)}
    raw = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    raw.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = BertTokenizerFast(
        tokenizer_object=raw,
        do_lower_case=False,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        pad_token_id=vocab["[PAD]"],
    )
    BertForTokenClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
