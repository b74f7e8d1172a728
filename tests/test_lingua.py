"""The real llmlingua package (0.2.2) through promptintern's offline adapter, on tiny local models.

LLMLingua / LongLLMLingua run on the tiny random Llama of ``tiny_model_dir`` (character-level tokenizer);
LLMLingua-2 on a tiny random 2-label ``BertForTokenClassification`` with a WordPiece vocabulary built here.
The random models make the choice of kept tokens arbitrary, so the tests check the package's contract
(rate control, kept text is a subsequence of the original, errors), not the quality of the choice.
"""

from __future__ import annotations

import re
import string

import pytest

pytest.importorskip("llmlingua")

from promptintern.compress import (  # noqa: E402
    TemplateCompressor,
    get_compressor,
    lingua,
)
from promptintern.tasks.base import Template  # noqa: E402

INSTRUCTION = (
    "You are an expert Python programmer. Write one function that solves the problem in the question.\n"
    "Use exactly the function name that the tests call. Do not print anything and do not read input.\n"
    "Return only the code in a single block."
)
DOCUMENTS = "\n\n".join(
    f"<API Doc {i}> {name}: {doc}"
    for i, (name, doc) in enumerate(
        [
            ("sorted(iterable, key=None)", "Returns a new sorted list from the items of iterable."),
            ("sep.join(parts)", "Concatenates strings, putting sep between them."),
            ("s.split(sep=None)", "Splits a string into a list of words separated by sep."),
            ("len(obj)", "Returns the number of items in a container."),
        ],
        start=1,
    )
)
QUESTION = "Write a function that sorts a list of words by their length."


def is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to build an llmlingua compressor fails the test."""
    lingua.clear_loaded()

    def boom(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(lingua, "load_prompt_compressor", boom)
    monkeypatch.setattr(lingua, "adapter_class", boom)


# -- the adapter's fixes ----------------------------------------------------------------------------


def test_adapter_loads_offline_and_on_cpu(tiny_model_dir, monkeypatch):
    import tiktoken.load

    monkeypatch.setattr(tiktoken.load, "read_file", lambda blob: pytest.fail(f"download of {blob}"))
    pc = lingua.load_prompt_compressor(str(tiny_model_dir), "cpu")
    assert pc.oai_tokenizer.name == "cl100k_base" and str(pc.model.device) == "cpu"
    assert lingua.load_prompt_compressor(str(tiny_model_dir), "cpu") is pc  # shared within the process


def test_kv_cache_conversion_matches_full_forward(tiny_model_dir):
    """Incremental perplexities through the legacy-list <-> DynamicCache conversion equal a full pass."""
    import torch

    pc = lingua.load_prompt_compressor(str(tiny_model_dir), "cpu")
    enc = pc.tokenizer(INSTRUCTION, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    full = pc.get_ppl("", "token", ids, mask)
    first, past = pc.get_ppl("", "token", ids, mask, return_kv=True, end=60)
    assert isinstance(past, list) and all(isinstance(k, torch.Tensor) for k, _ in past)
    assert past[0][0].shape[2] == 60 and len(past) == pc.model.config.num_hidden_layers
    second, past = pc.get_ppl("", "token", ids, mask, past_key_values=past, return_kv=True)
    # each call scores the tokens after its first one (as in llmlingua), so token 60 is skipped
    torch.testing.assert_close(first, full[:59], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, full[60:], rtol=1e-4, atol=1e-4)
    assert past[0][0].shape[2] == ids.shape[1]


def test_cache_conversion_helpers():
    import torch
    from transformers import DynamicCache

    legacy = [(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)) for _ in range(3)]
    cache = lingua.from_legacy_cache(legacy)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 5
    back = lingua.to_legacy_cache(cache)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(legacy, back, strict=True))
    assert lingua.from_legacy_cache(None) is None and lingua.to_legacy_cache(None) is None


def test_sentence_filter_without_nltk_data_is_a_clear_error(tiny_model_dir, monkeypatch):
    import nltk

    from promptintern.compress.offline import OfflineDataError

    def missing(resource, *args, **kwargs):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", missing)
    comp = get_compressor(
        "llmlingua", model=str(tiny_model_dir), compress_kwargs={"use_sentence_level_filter": True}
    )
    with pytest.raises(OfflineDataError, match="punkt_tab"):
        comp.compress(INSTRUCTION, 0.5)


def test_torch_threads_is_temporary():
    import torch

    before = torch.get_num_threads()
    with lingua.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with lingua.torch_threads(None):
        assert torch.get_num_threads() == before


# -- LLMLingua / LongLLMLingua on the tiny causal LM ------------------------------------------------


def model_rate(pc, original: str, compressed: str) -> float:
    return pc.get_token_length(compressed, False) / pc.get_token_length(original, False)


def test_llmlingua_compresses_long_text(tiny_model_dir):
    comp = get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu")
    text = (INSTRUCTION + "\n\n") * 3  # ~800 character tokens: several 200-token windows
    result = comp.compress(text, 0.5)
    pc = comp.prompt_compressor()
    assert is_subsequence(result.text, text) and result.text != text
    assert 0.35 < model_rate(pc, text, result.text) < 0.75  # the last window stays whole (llmlingua #73)
    assert result.unit == "cl100k_base" and result.origin_tokens == len(pc.oai_tokenizer.encode(text))
    assert result.rate_achieved == pytest.approx(result.compressed_tokens / result.origin_tokens)
    assert result.meta["llmlingua_origin_tokens"] == result.origin_tokens  # the package counts the same
    lower = comp.compress(text, 0.3)
    assert len(lower.text) < len(result.text)


def test_short_prompt_fix(tiny_model_dir):
    """Texts under iterative_size (200 tokens) are returned whole by llmlingua 0.2.2 (issue #196)."""
    text = INSTRUCTION[:150]
    fixed = get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu").compress(text, 0.5)
    pc = lingua.load_prompt_compressor(str(tiny_model_dir), "cpu")
    assert is_subsequence(fixed.text, text) and 0.3 < model_rate(pc, text, fixed.text) < 0.7
    upstream = get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu", short_prompt_fix=False)
    # upstream, negative indexing marks all but a couple of tokens "keep"
    assert is_subsequence(upstream.compress(text, 0.5).text, text)
    assert model_rate(pc, text, upstream.compress(text, 0.5).text) > 0.95
    assert upstream.fingerprint() != get_compressor("llmlingua", model=str(tiny_model_dir)).fingerprint()


def test_longllmlingua_needs_a_question_and_keeps_paragraph_order(tiny_model_dir):
    comp = get_compressor("longllmlingua", model=str(tiny_model_dir), device="cpu")
    with pytest.raises(ValueError, match="question"):
        comp.compress(DOCUMENTS, 0.5)
    result = comp.compress(DOCUMENTS, 0.5, question=QUESTION)
    assert result.text and is_subsequence(result.text, DOCUMENTS)
    assert QUESTION not in result.text  # the question is not appended (concate_question=False)
    pc = comp.prompt_compressor()
    assert model_rate(pc, DOCUMENTS, result.text) < 0.85


HEADER = "Here is the API documents of Python functions that may help you:"
API_DOCS = [
    "<API Doc 1> sorted(iterable, key=None): Returns a new sorted list from the items of iterable.",
    "<API Doc 2> sep.join(parts): Concatenates strings, putting sep between them. Example: ' '.join(w)",
    "<API Doc 3> s.split(sep=None): Splits a string into a list of words separated by sep.",
    "<API Doc 4> len(obj): Returns the number of items in a container. Example: len([1, 2]) == 2",
    "<API Doc 5> max(iterable, key=None): Returns the largest item, compared by key if given.",
]
#: A task template as tasks/documents.py renders it: header line and one line per document, single newlines.
PER_LINE_TEMPLATE = Template(INSTRUCTION, "\n".join([HEADER, *API_DOCS]))


def test_longllmlingua_contexts_are_one_per_api_document():
    """Issue 11: the instruction paragraph, the documents header, then each <API Doc i> line, in order."""
    assert lingua.split_contexts(PER_LINE_TEMPLATE.text) == [INSTRUCTION, HEADER, *API_DOCS]
    # without a header line: instruction + one context per document
    assert lingua.split_contexts(Template(INSTRUCTION, "\n".join(API_DOCS)).text) == [INSTRUCTION, *API_DOCS]
    # continuation lines stay with their document; blank paragraphs are dropped; blank-line separated docs
    # (the older test layout) split as before
    wrapped = "<API Doc 1> f(x): first line\n  continued here\n<API Doc 2> g(y): other\n\n\n\n"
    assert lingua.split_contexts(wrapped) == [
        "<API Doc 1> f(x): first line\n  continued here",
        "<API Doc 2> g(y): other",
    ]
    assert lingua.split_contexts(DOCUMENTS) == DOCUMENTS.split("\n\n")
    assert lingua.LongLLMLinguaCompressor(split=True).contexts(PER_LINE_TEMPLATE.text) == [
        INSTRUCTION,
        HEADER,
        *API_DOCS,
    ]
    assert lingua.LongLLMLinguaCompressor(split=False).contexts(PER_LINE_TEMPLATE.text) == [
        PER_LINE_TEMPLATE.text
    ]


@pytest.fixture
def recorded_compress_prompt(tiny_model_dir, monkeypatch):
    """The ``compress_prompt`` calls (contexts and keywords) of the tiny model's llmlingua compressor."""
    calls: list[dict] = []
    cls = lingua.load_prompt_compressor(str(tiny_model_dir), "cpu").__class__
    original = cls.compress_prompt

    def recording(self, context, *args, **kwargs):
        calls.append({"context": list(context), **kwargs})
        out = original(self, context, *args, **kwargs)
        calls[-1]["compressed_prompt"] = out["compressed_prompt"]
        return out

    monkeypatch.setattr(cls, "compress_prompt", recording)
    return calls


def test_longllmlingua_package_gets_one_context_per_api_doc(tiny_model_dir, recorded_compress_prompt):
    """The real package call receives the per-API-doc contexts and its output keeps the template's order."""
    text = PER_LINE_TEMPLATE.text
    contexts = [INSTRUCTION, HEADER, *API_DOCS]
    comp = get_compressor("longllmlingua", model=str(tiny_model_dir), device="cpu")
    result = comp.compress(text, 0.5, question=QUESTION)
    (call,) = recorded_compress_prompt
    assert call["context"] == contexts
    assert call["question"] == QUESTION and call["reorder_context"] == "original"
    assert call["rank_method"] == "longllmlingua" and call["concate_question"] is False
    pc = comp.prompt_compressor()
    assert call["target_token"] == pytest.approx(0.5 * sum(pc.get_token_length(c) for c in contexts))
    assert result.text == call["compressed_prompt"] and QUESTION not in result.text
    # kept text, in template order: a subsequence of the contexts joined as the package joins them
    assert result.text and is_subsequence(result.text, "\n\n".join(contexts))

    # coarse (context-level) selection alone: kept contexts come back whole, in template order, each API doc
    # its own paragraph, and the budget drops some documents
    coarse = get_compressor(
        "longllmlingua",
        model=str(tiny_model_dir),
        device="cpu",
        compress_kwargs={"use_token_level_filter": False},
    ).compress(text, 0.3, question=QUESTION)
    kept = coarse.text.split("\n\n")
    assert recorded_compress_prompt[-1]["context"] == contexts
    assert all(k in contexts for k in kept), kept
    positions = [contexts.index(k) for k in kept]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert 0 < len(kept) < len(contexts)
    assert all(p.count("<API Doc") <= 1 for p in kept)


def test_longllmlingua_fingerprint_changes_with_the_context_splitting(tiny_model_dir):
    """Results cached under the blank-line-only splitting (old fingerprint) are never served (issue 11)."""
    comp = get_compressor("longllmlingua", model=str(tiny_model_dir), device="cpu")
    old = {**lingua.LinguaCompressor.fingerprint(comp), "split": True}  # the fingerprint before issue 11
    assert comp.fingerprint() != old and comp.fingerprint()["contexts"] == lingua.CONTEXT_SPLITTING
    unsplit = get_compressor("longllmlingua", model=str(tiny_model_dir), device="cpu", split=False)
    assert unsplit.fingerprint() != comp.fingerprint()

    class Stub(lingua.LongLLMLinguaCompressor):
        """No model: returns a marker so the test can tell which entry was served."""

        marker = "new"

        def _compress(self, text, rate, *, question):
            return self.result(text, self.marker, rate)

    class OldStub(Stub):
        marker = "old"

        def fingerprint(self):
            return {**lingua.LinguaCompressor.fingerprint(self), "split": self.split}

    old_run = TemplateCompressor(OldStub(str(tiny_model_dir), device="cpu"), whole=True)
    assert old_run.compress(PER_LINE_TEMPLATE, 0.5, question=QUESTION).instruction == "old"  # cached
    new_run = TemplateCompressor(Stub(str(tiny_model_dir), device="cpu"), whole=True)
    first = new_run.compress_with_stats(PER_LINE_TEMPLATE, 0.5, question=QUESTION)
    assert not first.from_cache and first.template.instruction == "new"
    assert new_run.compress_with_stats(PER_LINE_TEMPLATE, 0.5, question=QUESTION).from_cache


# -- LLMLingua-2 on a tiny token classifier ---------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory):
    """A saved tiny random 2-label XLMRobertaForTokenClassification with a SentencePiece-style tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification, XLMRobertaTokenizerFast

    path = tmp_path_factory.mktemp("tiny-xlmr-tokclf")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [(t, 0.0) for t in specials] + [("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [(f"\u2581{c}", -2.5) for c in chars]
    pieces += [(f"\u2581{w}", -1.0) for w in ("the", "function", "Python", "list")]
    raw = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok = XLMRobertaTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=520,
        num_labels=2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    XLMRobertaForTokenClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


@pytest.mark.parametrize(
    ("fixture", "family"),
    [("tiny_bert_dir", "bert-base-multilingual-cased"), ("tiny_xlmr_dir", "xlm-roberta-large")],
)
def test_llmlingua2_with_a_local_token_classifier(fixture, family, request):
    path = str(request.getfixturevalue(fixture))
    comp = get_compressor("llmlingua2", model=path, device="cpu")
    single = comp.compress(INSTRUCTION, 0.5)  # one chunk (< 510 classifier tokens)
    assert single.text and words(single.text) < words(INSTRUCTION)
    long_text = (INSTRUCTION + "\n") * 4  # several 510-token chunks
    results = {rate: comp.compress(long_text, rate) for rate in (0.5, 0.3)}
    for rate, result in results.items():
        assert result.unit == "cl100k_base"
        assert abs(result.rate_achieved - rate) < 0.1, (rate, result.rate_achieved)
    assert results[0.3].compressed_tokens < results[0.5].compressed_tokens
    pc = comp.prompt_compressor()
    assert pc.use_llmlingua2 and family in pc.model_name and pc.model_path == path


def test_llmlingua2_loading_keeps_the_callers_random_state(tiny_bert_dir):
    import random

    import torch

    lingua.clear_loaded()
    torch.manual_seed(123)
    random.seed(7)
    expected = (torch.rand(2).tolist(), random.random())
    torch.manual_seed(123)
    random.seed(7)
    lingua.load_prompt_compressor(str(tiny_bert_dir), "cpu", use_llmlingua2=True)  # seeds 42 inside
    assert (torch.rand(2).tolist(), random.random()) == expected


def test_llmlingua2_force_tokens_keep_line_breaks(tiny_bert_dir):
    comp = get_compressor("llmlingua2", model=str(tiny_bert_dir), compress_kwargs={"force_tokens": ["\n"]})
    result = comp.compress((INSTRUCTION + "\n") * 2, 0.5)
    assert result.text.count("\n") == 6


def test_llmlingua2_rejects_a_causal_lm(tiny_model_dir):
    comp = get_compressor("llmlingua2", model=str(tiny_model_dir), device="cpu")
    with pytest.raises(lingua.LLMLingua2CheckpointError, match="token-classification"):
        comp.compress(INSTRUCTION, 0.5)


def test_llmlingua2_model_from_environment(tiny_bert_dir, monkeypatch):
    monkeypatch.setenv(lingua.LLMLINGUA2_ENV, str(tiny_bert_dir))
    assert get_compressor("llmlingua2").model == str(tiny_bert_dir)


# -- templates and the cache ------------------------------------------------------------------------


def test_template_compression_is_cached_without_loading_a_model(tiny_model_dir, tiny_bert_dir, monkeypatch):
    template = Template(INSTRUCTION, DOCUMENTS)
    fresh = TemplateCompressor(
        get_compressor("llmlingua2", model=str(tiny_bert_dir), device="cpu"),
        get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu"),
    )
    first = fresh.compress_with_stats(template, 0.5)
    assert not first.from_cache and first.template != template
    assert first.instruction.rate_achieved < 0.8 and first.documents.rate_achieved < 0.95

    lingua.clear_loaded()

    def boom(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(lingua, "load_prompt_compressor", boom)
    monkeypatch.setattr(lingua, "adapter_class", boom)
    again = TemplateCompressor(
        get_compressor("llmlingua2", model=str(tiny_bert_dir), device="cpu"),
        get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu"),
    ).compress_with_stats(template, 0.5)
    assert again.from_cache and again.template == first.template
    assert again.instruction == first.instruction and again.documents == first.documents


def test_rate_one_and_zero_never_load_a_model(no_model_loading, tiny_model_dir):
    comp = get_compressor("llmlingua", model=str(tiny_model_dir), device="cpu")
    template = Template(INSTRUCTION, DOCUMENTS)
    assert TemplateCompressor(comp, cache=False).compress(template, 1.0) == template
    assert TemplateCompressor(comp, cache=False).compress(template, 0.0) == Template("", "")


# -- the embedded SmolLM2 ---------------------------------------------------------------------------


@pytest.mark.integration
def test_llmlingua_on_embedded_model_template_at_half():
    """A ~300-token template (MBPP extended instruction + first API documents) at τ=0.5 with SmolLM2-135M."""
    from promptintern.tasks import get_task

    mbpp = get_task("mbpp", template="extended").template()
    documents = "\n".join(mbpp.documents.split("\n")[:4])  # ~175 tokens
    template = Template(mbpp.instruction, documents)
    comp = get_compressor("llmlingua", model="embedded", device="cpu")
    out = TemplateCompressor(comp).compress_with_stats(template, 0.5)
    pc = comp.prompt_compressor()
    total = pc.get_token_length(template.instruction, False) + pc.get_token_length(template.documents, False)
    assert 280 <= total <= 360
    for part, result in (("instruction", out.instruction), ("documents", out.documents)):
        original = getattr(template, part)
        assert 0.25 < model_rate(pc, original, result.text) < 0.75, part
        assert 0.25 < result.rate_achieved < 0.8, part
    assert TemplateCompressor(comp).compress_with_stats(template, 0.5).from_cache
