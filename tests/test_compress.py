"""Compression protocol, truncate backend, template compression, result cache and offline tiktoken."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from promptintern.compress import (
    BaseCompressor,
    CachedCompressor,
    CompressionCache,
    CompressionResult,
    Compressor,
    TemplateCompressor,
    TruncateCompressor,
    canonical_name,
    get_compressor,
)
from promptintern.compress.offline import (
    CL100K_CACHE_NAME,
    CL100K_SHA256,
    CL100K_URL,
    cl100k_encoding,
    tiktoken_cache_dir,
    tiktoken_offline,
)
from promptintern.paths import cache_dir
from promptintern.tasks.base import Template

TEXT = "alpha beta gamma delta\nepsilon zeta eta\n\ntheta iota kappa"  # 10 words, 3 non-blank lines


class Recording(BaseCompressor):
    """Keeps the first half of the characters and records every model-level call."""

    name = "recording"

    def __init__(self, tag: str = "r"):
        self.tag = tag
        self.calls: list[tuple[str, float, str | None]] = []

    def fingerprint(self):
        return {"backend": self.name, "tag": self.tag}

    def _compress(self, text, rate, *, question):
        self.calls.append((text, rate, question))
        return self.result(text, f"[{self.tag}]" + text[: int(len(text) * rate)], rate)


# -- rate semantics ---------------------------------------------------------------------------------


def test_rate_one_and_zero_do_not_run_the_backend():
    comp = Recording()
    full = comp.compress(TEXT, 1.0)
    empty = comp.compress(TEXT, 0)
    assert (
        full.text == TEXT and full.rate_achieved == 1.0 and full.origin_tokens == full.compressed_tokens == 10
    )
    assert empty.text == "" and empty.rate_achieved == 0.0 and empty.origin_tokens == 10
    assert empty.compressed_tokens == 0 and comp.calls == []
    blank = comp.compress("  \n ", 0.5)
    assert blank.text == "  \n " and blank.rate_achieved == 1.0 and comp.calls == []


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", None, float("nan")])
def test_invalid_rates_are_rejected(bad):
    with pytest.raises(ValueError, match="rate"):
        TruncateCompressor().compress(TEXT, bad)


def test_result_round_trips_through_dict():
    result = TruncateCompressor().compress(TEXT, 0.5)
    assert CompressionResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert isinstance(TruncateCompressor(), Compressor)


# -- truncate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "kept"), [(0.5, 5), (0.3, 3), (0.25, 3), (0.01, 1), (0.99, 10)])
def test_truncate_head_keeps_ceil_of_words(rate, kept):
    result = TruncateCompressor().compress(TEXT, rate)
    assert len(result.text.split()) == kept == result.compressed_tokens
    assert TEXT.startswith(result.text) and result.unit == "words"
    assert result.rate_achieved == pytest.approx(kept / 10) and result.rate_achieved >= rate


def test_truncate_head_keeps_original_spacing():
    assert TruncateCompressor().compress(TEXT, 0.5).text == "alpha beta gamma delta\nepsilon"


def test_truncate_lines_mode_keeps_every_line():
    result = TruncateCompressor(mode="lines").compress(TEXT, 0.5)
    assert result.text == "alpha beta\nepsilon zeta\n\ntheta iota"
    assert result.compressed_tokens == 6 and result.meta == {"mode": "lines"}
    with pytest.raises(ValueError, match="mode"):
        TruncateCompressor(mode="tail")


def test_truncate_is_deterministic():
    a, b = TruncateCompressor().compress(TEXT * 3, 0.37), TruncateCompressor().compress(TEXT * 3, 0.37)
    assert a == b


# -- registry ---------------------------------------------------------------------------------------


def test_registry_names_and_aliases():
    assert canonical_name("LLMLingua-2") == "llmlingua2"
    assert canonical_name("long_llmlingua") == "longllmlingua"
    assert isinstance(get_compressor("truncate", mode="lines"), TruncateCompressor)
    assert canonical_name("Selective-Context") == "selectivecontext"
    assert canonical_name("llm_generation") == "llmgeneration"
    with pytest.raises(ValueError, match="unknown compressor"):
        get_compressor("gpt5-magic")


def test_whole_template_compression_is_one_text():
    from promptintern.compress import TemplateCompressor
    from promptintern.tasks import Template

    template = Template("one two three four five six seven eight", "alpha beta gamma delta epsilon zeta")
    whole = TemplateCompressor(TruncateCompressor(), whole=True, cache=False).compress_with_stats(template, 0.5)
    parts = TemplateCompressor(TruncateCompressor(), cache=False).compress_with_stats(template, 0.5)
    assert whole.template.documents == "" and whole.template.instruction
    assert whole.origin_tokens == parts.origin_tokens == 14
    assert whole.compressed_tokens == 7  # half of the joined text, not half of each part
    assert whole.template.instruction != parts.template.text
    with pytest.raises(ValueError, match="no document_compressor"):
        TemplateCompressor(TruncateCompressor(), TruncateCompressor(), whole=True)


def test_llmlingua2_without_checkpoint_is_a_clear_error(monkeypatch):
    from promptintern.compress.lingua import LLMLINGUA2_ENV, LLMLingua2CheckpointError

    monkeypatch.delenv(LLMLINGUA2_ENV, raising=False)
    with pytest.raises(LLMLingua2CheckpointError, match="token-classification checkpoint"):
        get_compressor("llmlingua2")
    with pytest.raises(LLMLingua2CheckpointError, match="llmlingua-2-xlm-roberta-large-meetingbank"):
        get_compressor("llmlingua2", model="embedded")


def test_lingua_compressors_are_lazy_and_fingerprint_without_loading(monkeypatch):
    from promptintern.compress import lingua

    monkeypatch.setattr(lingua, "load_prompt_compressor", lambda *a, **k: pytest.fail("model loaded"))
    comp = get_compressor("llmlingua", model="some/hub-id", device="cpu")
    fp = comp.fingerprint()
    assert fp["backend"] == "llmlingua" and fp["model"].startswith("some/hub-id#") and fp["llmlingua"] == "0.2.2"
    assert comp.compress(TEXT, 1.0).text == TEXT and comp.compress(TEXT, 0.0).text == ""
    assert comp.compress(TEXT, 1.0).unit == "cl100k_base"
    with pytest.raises(ValueError, match="set by the compressor"):
        get_compressor("llmlingua", compress_kwargs={"rate": 0.2})


def test_package_import_is_light():
    code = "import sys, promptintern.compress; print('torch' in sys.modules, 'llmlingua' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- templates and cache ------------------------------------------------------------------------------

TEMPLATE = Template(
    instruction="You are a helpful programmer.\nFollow the rules.", documents="<API Doc 1> f(x)"
)


def test_template_compressor_compresses_parts_separately():
    inst, docs = Recording("i"), Recording("d")
    out = TemplateCompressor(inst, docs, cache=False).compress_with_stats(
        TEMPLATE, 0.5, documents_rate=0.25, question="q?"
    )
    assert isinstance(out.template, Template)
    assert out.template.instruction.startswith("[i]") and out.template.documents.startswith("[d]")
    assert inst.calls == [(TEMPLATE.instruction, 0.5, "q?")]
    assert docs.calls == [(TEMPLATE.documents, 0.25, "q?")]
    assert (
        not out.from_cache
        and out.origin_tokens == out.instruction.origin_tokens + out.documents.origin_tokens
    )


def test_template_compressor_uses_one_compressor_for_both_and_empty_documents():
    comp = Recording()
    out = TemplateCompressor(comp, cache=False).compress(Template("one two three four", ""), 0.5)
    assert out.documents == "" and len(comp.calls) == 1


def test_template_cache_second_call_runs_no_backend():
    first = Recording()
    a = TemplateCompressor(first).compress_with_stats(TEMPLATE, 0.5)
    files = sorted(cache_dir("compressed").glob("*.json"))
    assert len(files) == 1 and not list(cache_dir("compressed").glob(".tmp-*"))
    stored = json.loads(files[0].read_text())
    assert stored["instruction"]["text"] == a.template.instruction and stored["rate"] == 0.5

    second = Recording()
    b = TemplateCompressor(second).compress_with_stats(TEMPLATE, 0.5)
    assert second.calls == [] and b.from_cache and b.template == a.template
    assert b.instruction == a.instruction and b.documents == a.documents

    # any change of text, rate, question or compressor identity is a miss
    for template, rate, question, tag in [
        (Template(TEMPLATE.instruction + " ", TEMPLATE.documents), 0.5, None, "r"),
        (TEMPLATE, 0.3, None, "r"),
        (TEMPLATE, 0.5, "q?", "r"),
        (TEMPLATE, 0.5, None, "other"),
    ]:
        comp = Recording(tag)
        assert not TemplateCompressor(comp).compress_with_stats(template, rate, question=question).from_cache
        assert comp.calls
    assert len(list(cache_dir("compressed").glob("*.json"))) == 5


def test_corrupt_cache_entry_is_a_miss(tmp_path):
    store = CompressionCache(tmp_path)
    key = store.key({"x": 1})
    store.path(key).write_text("{not json")
    assert store.load(key) is None
    store.store(key, {"value": 2})
    assert store.load(key)["value"] == 2 and [p.name for p in tmp_path.iterdir()] == [f"{key}.json"]


def test_cached_compressor_for_single_texts(tmp_path):
    inner = Recording()
    cached = CachedCompressor(inner, tmp_path)
    a = cached.compress(TEXT, 0.5)
    b = cached.compress(TEXT, 0.5)
    assert a == b and len(inner.calls) == 1 and cached.last_from_cache
    cached.compress(TEXT, 0.5, question="q")
    assert len(inner.calls) == 2 and not cached.last_from_cache


# -- offline tiktoken -------------------------------------------------------------------------------


def test_cl100k_cache_name_is_tiktokens():
    assert CL100K_CACHE_NAME == hashlib.sha1(CL100K_URL.encode()).hexdigest()
    path = tiktoken_cache_dir() / CL100K_CACHE_NAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256


def test_tiktoken_reads_cl100k_offline(monkeypatch):
    import tiktoken.load

    def no_network(blobpath):
        raise AssertionError(f"tiktoken tried to fetch {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent-user-setting")
    with tiktoken_offline() as directory:
        assert os.environ["TIKTOKEN_CACHE_DIR"] == str(directory)
        data = tiktoken.load.read_file_cached(CL100K_URL, CL100K_SHA256)
        ranks = tiktoken.load.load_tiktoken_bpe(CL100K_URL, CL100K_SHA256)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/nonexistent-user-setting"  # restored
    assert hashlib.sha256(data).hexdigest() == CL100K_SHA256 and len(ranks) == 100256


def test_cl100k_encoding_counts():
    enc = cl100k_encoding()
    assert enc.name == "cl100k_base" and enc.encode("hello world") == [15339, 1917]


def test_damaged_cached_blob_is_replaced():
    directory = tiktoken_cache_dir()
    (directory / CL100K_CACHE_NAME).write_bytes(b"garbage")
    assert tiktoken_cache_dir() == directory
    assert hashlib.sha256((directory / CL100K_CACHE_NAME).read_bytes()).hexdigest() == CL100K_SHA256
