"""Shared fixtures: an isolated PROMPTINTERN_HOME and a tiny random Llama with a word-level tokenizer."""

from __future__ import annotations

import os
import string

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: llama.cpp in-process next to torch

import pytest  # noqa: E402

from promptintern.testing import save_tiny_llama

#: Caches shared by every test home of the session: derived dataset splits (the NL2Bash rebuild, 10-20 s)
#: and the embedded model's GGUF -> HF conversion (~1 min); both are keyed by hashes of their sources.
SHARED_CACHES = ("datasets", "models")


def make_home(tmp_path_factory, name: str = "home"):
    """A fresh PROMPTINTERN_HOME whose :data:`SHARED_CACHES` point to session-wide folders."""
    home = tmp_path_factory.mktemp(name)
    (home / "cache").mkdir()
    for kind in SHARED_CACHES:
        shared = tmp_path_factory.getbasetemp() / f"shared-{kind}-cache"
        shared.mkdir(exist_ok=True)
        (home / "cache" / kind).symlink_to(shared, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test writes caches and stores under its own temporary PROMPTINTERN_HOME (see :func:`make_home`)."""
    monkeypatch.setenv("PROMPTINTERN_HOME", str(make_home(tmp_path_factory)))


@pytest.fixture(autouse=True)
def _isolated_task_registry(monkeypatch):
    """Task folders a test registers (by path or include path) are forgotten after it."""
    import promptintern.tasks as tasks

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(tasks, "_ENV_SEEN", set(tasks._ENV_SEEN))
    monkeypatch.delenv(tasks.INCLUDE_ENV, raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random LlamaForCausalLM + tokenizer, loadable by path like any HF checkpoint."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls run fastest (and least disturbed by a busy machine) on one thread; restored afterwards.
    Modules of tiny training runs use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
