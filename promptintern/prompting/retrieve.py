"""Top-k few-shot examples per instance by sentence BLEU (Algorithm 1's example selection, Eq. 3).

``field`` says which text is scored. The paper's Eq. 3 scores GOLD OUTPUTS, s(y_i, y_j): that is
``field="answer"`` (the instance's reference against each bank entry's reference), used for training
instances. A test instance has no gold output, so test-time prompts use ``field="query"``.

Score of bank entry ``b`` for instance ``x`` (``text`` = query or reference):
``sacrebleu.sentence_bleu(text(x), [text(b)]).score`` with sacrebleu's defaults -- the instance's text is
the **hypothesis**, the bank entry's the **reference**; 13a
tokenizer, case-sensitive, max order 4, ``exp`` smoothing (NIST / Chen & Cherry method 3), effective order.
Ranking: score descending, ties (including all zero scores) in bank order. The instance itself is never
returned; it is excluded **by id only**, so a different bank entry with an identical query stays eligible.

The ranking is exact, not approximated, but avoids 8k x 8k ``sentence_bleu`` calls: every query is
tokenized once and its n-grams indexed; clipped n-gram matches for a block of queries against the whole
bank come from posting lists (rare n-grams) plus float32 matrix products of ``[count >= level]`` indicators
(frequent n-grams; ``min(a, b) = sum_l [a >= l][b >= l]``, exact in float32). A vectorised BLEU of these
statistics shortlists every entry within ``_MARGIN`` of the k-th best, and the shortlist is ordered by
:func:`bleu_from_stats`, a line-by-line copy of sacrebleu's ``BLEU.compute_bleu`` (bit-identical scores,
so ties are real ties). Entries sharing no unigram with the query score 0.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from promptintern.io import write_json
from promptintern.keys import content_key
from promptintern.logs import progress as step_progress
from promptintern.paths import cache_dir
from promptintern.tasks.base import Instance

VERSION = 2
FIELDS = ("query", "answer")
MAX_ORDER = 4
BLOCK = 256  # hypotheses scored together
DENSE_DIVISOR, DENSE_MIN_DF = 32, 32  # n-grams in >= max(MIN_DF, bank / DIVISOR) entries go dense
_MARGIN = 1e-6  # >> float error of the vectorised scores (0-100 scale)
_TOKENIZER = Tokenizer13a()


def tokenize(text: str) -> list[str]:
    """sacrebleu's BLEU preprocessing: right-strip, 13a tokenization, whitespace split."""
    return _TOKENIZER(text.rstrip()).split()


def bleu_from_stats(hyp_len: int, ref_len: int, correct: Sequence[int]) -> float:
    """Sentence BLEU (0-100) from clipped match counts, as sacrebleu computes it (exp smoothing, eff. order)."""
    if not any(correct):
        return 0.0
    bp = 1.0
    if hyp_len < ref_len:
        bp = math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0
    logs, smooth = [], 1.0
    for n in range(1, MAX_ORDER + 1):
        total = hyp_len - n + 1
        if total <= 0:
            break
        if correct[n - 1] == 0:
            smooth *= 2
            logs.append(math.log(100.0 / (smooth * total)))
        else:
            logs.append(math.log(100.0 * correct[n - 1] / total))
    return bp * math.exp(sum(logs) / len(logs))


def query_bleu(hypothesis: str, reference: str) -> float:
    """``sacrebleu.sentence_bleu(hypothesis, [reference]).score`` (bit-identical), without sacrebleu objects."""
    hyp, ref = tokenize(hypothesis), tokenize(reference)
    correct = [sum((_ngrams(hyp, n) & _ngrams(ref, n)).values()) for n in range(1, MAX_ORDER + 1)]
    return bleu_from_stats(len(hyp), len(ref), correct)


def _approx_bleu(hyp_len: np.ndarray, ref_len: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """:func:`bleu_from_stats` vectorised over (hypotheses, bank); may differ from it in the last bits.

    With exp smoothing the zero-match orders form a suffix (an n+1-gram match implies an n-gram match), so
    their smoothed log precisions add up to ``-log(2) * Z(Z+1)/2`` for Z zero orders among the used ones.
    """
    used = np.clip(hyp_len, 0, MAX_ORDER)[:, None]  # effective order, shape (b, 1)
    h = hyp_len[:, None].astype(np.float64)
    totals = np.maximum(h - np.arange(MAX_ORDER), 1.0)
    base = np.where(np.arange(MAX_ORDER) < used, math.log(100.0) - np.log(totals), 0.0).sum(1, keepdims=True)
    logc = np.log(np.maximum(np.arange(int(correct.max(initial=0)) + 1), 1))  # log c, 0 for c = 0
    logsum, nonzero = np.zeros(correct[:, 0].shape), np.zeros(correct[:, 0].shape, dtype=np.int64)
    for n in range(MAX_ORDER):
        logsum += logc[correct[:, n]]
        nonzero += correct[:, n] > 0
    zeros = used - nonzero
    logsum += base - math.log(2.0) * (zeros * (zeros + 1) // 2)
    bp = np.where(h < ref_len, np.exp(1 - ref_len / np.maximum(h, 1.0)), 1.0)
    return np.where(nonzero > 0, bp * np.exp(logsum / np.maximum(used, 1)), 0.0)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


class _OrderIndex:
    """Bank n-grams of one order: CSR posting lists for rare ones, a dense count matrix for frequent ones."""

    def __init__(self, bank_ngrams: list[Counter], dense_df: int):
        self.size = len(bank_ngrams)
        self.ids: dict[tuple, int] = {}
        gids, rows, counts = [], [], []
        for j, grams in enumerate(bank_ngrams):
            for gram, c in grams.items():
                gids.append(self.ids.setdefault(gram, len(self.ids)))
                rows.append(j)
                counts.append(c)
        gids, rows, counts = (np.asarray(a, dtype=np.int64) for a in (gids, rows, counts))
        df = np.bincount(gids, minlength=len(self.ids))
        self.col = np.full(len(self.ids), -1, dtype=np.int64)  # dense column of a frequent n-gram
        dense = np.flatnonzero(df >= dense_df)
        self.col[dense] = np.arange(len(dense))
        self.dense = np.zeros((len(dense), self.size), dtype=np.int32)
        is_dense = self.col[gids] >= 0
        self.dense[self.col[gids[is_dense]], rows[is_dense]] = counts[is_dense]
        self.dense_max = self.dense.max(1, initial=0)
        sparse = ~is_dense
        order = np.argsort(gids[sparse], kind="stable")
        self.rows, self.counts = rows[sparse][order], counts[sparse][order]
        self.indptr = np.zeros(len(self.ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(gids[sparse], minlength=len(self.ids)), out=self.indptr[1:])

    def matches(self, hyps: list[Counter]) -> np.ndarray:
        """Clipped match counts ``sum_g min(h_g, r_g)``, shape (len(hyps), bank size)."""
        b, size = len(hyps), self.size
        hrow, hgid, hcnt = [], [], []
        for i, grams in enumerate(hyps):
            for gram, c in grams.items():
                g = self.ids.get(gram)
                if g is not None:
                    hrow.append(i)
                    hgid.append(g)
                    hcnt.append(c)
        out = np.zeros((b, size), dtype=np.float32)
        if not hgid:
            return out.astype(np.int32)
        hrow, hgid, hcnt = (np.asarray(a, dtype=np.int64) for a in (hrow, hgid, hcnt))
        col = self.col[hgid]
        d = col >= 0
        if d.any():
            h = np.zeros((b, len(self.dense)), dtype=np.int32)
            h[hrow[d], col[d]] = hcnt[d]
            hmax, dmax = h.max(0), self.dense_max
            for level in range(1, int(np.minimum(hmax, dmax).max()) + 1):
                cols = np.flatnonzero((hmax >= level) & (dmax >= level))
                hl = (h[:, cols] >= level).astype(np.float32)
                out += hl @ (self.dense[cols] >= level).astype(np.float32)
        s = ~d
        starts, lens = self.indptr[hgid[s]], self.indptr[hgid[s] + 1] - self.indptr[hgid[s]]
        total = int(lens.sum())
        if total:
            offsets = np.arange(total) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
            key = np.repeat(hrow[s] * size, lens) + self.rows[offsets]
            weight = np.minimum(np.repeat(hcnt[s], lens), self.counts[offsets])
            out += np.bincount(key, weights=weight, minlength=b * size).reshape(b, size).astype(np.float32)
        return np.rint(out).astype(np.int32)


def text_of(instance: Instance, field: str) -> str:
    """The text Eq. 3 scores: the query, or the gold output (``answer``)."""
    return instance.reference if field == "answer" else instance.query


class ExampleRetriever:
    """Ranks a bank of (training) instances by sentence BLEU of their ``field`` text against an instance's.

    ``fraction`` keeps a seeded random ``round_half_up(fraction * len(bank))`` entries (at least one), in
    bank order; with one seed the 25 % bank is a subset of the 50 % bank, which is a subset of the full one.
    """

    def __init__(
        self, bank: Sequence[Instance], *, fraction: float = 1.0, seed: int = 0, field: str = "query"
    ):
        if field not in FIELDS:
            raise ValueError(f"retrieval field must be one of {', '.join(FIELDS)}, got {field!r}")
        self.field = field
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if not bank:
            raise ValueError("the example bank is empty")
        ids = [ex.id for ex in bank]
        if len(set(ids)) != len(ids):
            raise ValueError("bank instance ids are not unique")
        self.full_bank, self.fraction, self.seed = list(bank), float(fraction), seed
        size = max(1, math.floor(fraction * len(bank) + 0.5))
        perm = list(range(len(bank)))
        random.Random(seed).shuffle(perm)
        self.bank = [self.full_bank[i] for i in sorted(perm[:size])]
        self._position = {ex.id: j for j, ex in enumerate(self.bank)}
        self._index: list[_OrderIndex] | None = None
        self._memo: dict[tuple, float] = {}

    # -- scoring ----------------------------------------------------------------------------------
    def _build(self) -> list[_OrderIndex]:
        if self._index is None:
            toks = [tokenize(text_of(ex, self.field)) for ex in self.bank]
            self._ref_len = np.array([len(t) for t in toks], dtype=np.int64)
            dense_df = max(DENSE_MIN_DF, len(self.bank) // DENSE_DIVISOR)
            self._index = [
                _OrderIndex([_ngrams(t, n) for t in toks], dense_df) for n in range(1, MAX_ORDER + 1)
            ]
        return self._index

    def _exact(self, hyp_len: int, ref_len: int, correct: list[int]) -> float:
        key = (hyp_len, max(ref_len, hyp_len), *correct)  # bp is 1 whenever ref_len <= hyp_len
        score = self._memo.get(key)
        if score is None:
            score = self._memo[key] = bleu_from_stats(hyp_len, key[1], correct)
        return score

    def _statistics(self, toks: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Hypothesis lengths (b,) and clipped match counts (b, orders, bank) of tokenized queries."""
        index = self._build()
        correct = np.stack([o.matches([_ngrams(t, n) for t in toks]) for n, o in enumerate(index, 1)], axis=1)
        return np.array([len(t) for t in toks], dtype=np.int64), correct

    def _rank(self, instances: Sequence[Instance], k: int) -> list[list[int]]:
        """Bank positions of the top ``k`` for each instance (``k`` >= 1)."""
        size = len(self.bank)
        toks = [tokenize(text_of(x, self.field)) for x in instances]
        hyp_len, correct = self._statistics(toks)
        approx = _approx_bleu(hyp_len, self._ref_len, correct)
        out = []
        for row, x in enumerate(instances):
            s, self_pos = approx[row], self._position.get(x.id, -1)
            if self_pos >= 0:
                s[self_pos] = -1.0
            kk = min(k, size - (self_pos >= 0))
            if kk == 0:
                out.append([])
                continue
            # every true top-k entry has an approximate score within 2 float errors of the k-th best
            kth = np.partition(s, size - kk)[size - kk]
            sel = np.flatnonzero((s >= kth - _MARGIN) & (s > 0))
            stats = correct[row][:, sel].T.tolist()
            exact = [
                self._exact(len(toks[row]), int(self._ref_len[j]), c) for j, c in zip(sel, stats, strict=True)
            ]
            top = [j for e, j in sorted(zip((-e for e in exact), sel.tolist(), strict=True)) if e < 0][:kk]
            if len(top) < kk:  # zero-score entries follow in bank order
                taken = set(top) | {self_pos}
                top += [j for j in range(size) if j not in taken][: kk - len(top)]
            out.append(top)
        return out

    def scores(self, instance: Instance) -> list[float]:
        """Exact sentence BLEU of the instance's text against every bank entry's, in bank order (self included)."""
        hyp_len, correct = self._statistics([tokenize(text_of(instance, self.field))])
        return [
            self._exact(int(hyp_len[0]), int(r), c)
            for r, c in zip(self._ref_len.tolist(), correct[0].T.tolist(), strict=True)
        ]

    def top_k(self, instance: Instance, k: int) -> list[Instance]:
        """The ``k`` best bank instances for ``instance`` (fewer only if the bank has fewer others)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return [self.bank[j] for j in self._rank([instance], k)[0]] if k else []

    # -- batch + cache ----------------------------------------------------------------------------
    def cache_key(self, instances: Sequence[Instance], k: int) -> str:
        def texts(items):
            return [[ex.id, text_of(ex, self.field)] for ex in items]

        header = {"v": VERSION, "sacrebleu": sacrebleu.__version__, "k": k, "field": self.field}
        header |= {"fraction": self.fraction, "seed": self.seed}
        return content_key("retrieval", {**header, "bank": texts(self.full_bank), "instances": texts(instances)})

    def retrieve_all(
        self, instances: Sequence[Instance], k: int, *, use_cache: bool = True, progress: bool | None = None
    ) -> dict[str, list[str]]:
        """``{instance id: [k example ids]}`` for every instance, cached under ``cache_dir("retrieval")``.

        ``progress`` shows a progress bar when stderr is a terminal (None: the same as True).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if len({x.id for x in instances}) != len(instances):
            raise ValueError("instance ids are not unique")
        key = self.cache_key(instances, k)
        path = cache_dir("retrieval") / f"{key[:32]}.json"
        if use_cache and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("key") == key:
                    return data["examples"]
            except (OSError, ValueError, KeyError):
                pass
        result: dict[str, list[str]] = {}
        enabled = progress is None or progress
        with step_progress(len(instances), f"retrieve top-{k}", enabled=enabled) as bar:
            for lo in range(0, len(instances), BLOCK):
                chunk = instances[lo : lo + BLOCK]
                ranked = self._rank(chunk, k) if k else [[] for _ in chunk]
                for x, top in zip(chunk, ranked, strict=True):
                    result[x.id] = [self.bank[j].id for j in top]
                bar.advance(len(chunk))
        if use_cache:
            meta = {"key": key, "k": k, "field": self.field, "fraction": self.fraction, "seed": self.seed}
            write_json(path, {**meta, "examples": result}, indent=None)
        return result


def retrieve_all(
    instances: Sequence[Instance],
    k: int,
    bank: Iterable[Instance] | None = None,
    *,
    fraction: float = 1.0,
    seed: int = 0,
    field: str = "query",
    use_cache: bool = True,
    progress: bool | None = None,
) -> dict[str, list[str]]:
    """Top-k example ids for every instance from ``bank`` (default: the instances themselves)."""
    bank = list(instances if bank is None else bank)
    retriever = ExampleRetriever(bank, fraction=fraction, seed=seed, field=field)
    return retriever.retrieve_all(instances, k, use_cache=use_cache, progress=progress)
