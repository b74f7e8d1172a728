"""BLEU for NL2Bash with sacrebleu.

Tokenisation is sacrebleu's default ``13a`` (the WMT ``mteval-v13a`` rules: punctuation is split off,
case kept), applied to the raw command strings; one reference per instance.  ``bleu`` is corpus BLEU
(0-100) and ``sentence_bleu_mean`` the mean of sacrebleu's smoothed sentence BLEU (exp smoothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU

TOKENIZE = "13a"


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU and sacrebleu's signature string (records tokeniser, smoothing, version)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    bleu = BLEU(tokenize=TOKENIZE)
    score = bleu.corpus_score(list(predictions), [list(references)])
    return score.score, str(bleu.get_signature())


_SENTENCE_BLEU = BLEU(tokenize=TOKENIZE, effective_order=True)


def sentence_bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU (0-100) of one prediction against one reference."""
    return _SENTENCE_BLEU.sentence_score(prediction, [reference]).score
