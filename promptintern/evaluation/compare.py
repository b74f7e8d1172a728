"""A method's run set against a reference run (by default the full prompt): what ``promptintern run
--baseline METHOD`` reports to someone deciding whether to internalize their prompt.

Accuracy comes with both 95 % intervals; input tokens are the model's own and cl100k (what an OpenAI chat
model would bill); cost per 1,000 requests prices the cl100k tokens with ``prices.yaml`` at ``price_model``
(default a fine-tuned gpt-3.5-turbo, the paper's Table 8 setting, since the internalized model is a
fine-tuned one; the reference is priced the same so the saving isolates the prompt).
"""

from __future__ import annotations

from typing import Any

from promptintern.evaluation.cost import load_prices

PRICE_MODEL = "ft:gpt-3.5-turbo"


def _cost_per_1k(result: dict[str, Any], prices, model: str) -> float | None:
    tokens_in, tokens_out = result.get("input_tokens_cl100k_mean"), result.get("output_tokens_cl100k_mean")
    if tokens_in is None:
        return None
    return 1000 * prices.cost(model, tokens_in, tokens_out or 0.0)


def _summary(result: dict[str, Any], prices, model: str) -> dict[str, Any]:
    return {
        "method": result["method"],
        "backend": result.get("backend", "hf"),
        "metric": result["primary"],
        "value": result["value"],
        "ci95": result["ci95"],
        "n": result["n"],
        "input_tokens_mean": result["input_tokens_mean"],
        "input_tokens_cl100k_mean": result.get("input_tokens_cl100k_mean"),
        "latency_s_mean": result["latency_s_mean"],
        "usd_per_1k_requests": _cost_per_1k(result, prices, model),
    }


def _saving(ours: float | None, reference: float | None) -> float | None:
    """1 - ours / reference (0.9 = 90 % less); None when either is missing or the reference is 0."""
    return None if ours is None or not reference else 1.0 - ours / reference


def compare(result: dict[str, Any], reference: dict[str, Any], price_model: str = PRICE_MODEL,
            prices_file: str | None = None) -> dict[str, Any]:
    """Both runs' summaries and the savings of ``result`` relative to ``reference``."""
    prices = load_prices(prices_file)
    ours, ref = _summary(result, prices, price_model), _summary(reference, prices, price_model)
    return {
        "price_model": price_model,
        "prices_as_of": prices.as_of,
        "method": ours,
        "reference": ref,
        "accuracy_difference": ours["value"] - ref["value"],
        "input_token_saving": _saving(ours["input_tokens_mean"], ref["input_tokens_mean"]),
        "input_token_saving_cl100k": _saving(ours["input_tokens_cl100k_mean"], ref["input_tokens_cl100k_mean"]),
        "latency_speedup": (ref["latency_s_mean"] / ours["latency_s_mean"]) if ours["latency_s_mean"] else None,
        "cost_saving": _saving(ours["usd_per_1k_requests"], ref["usd_per_1k_requests"]),
    }
