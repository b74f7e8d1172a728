"""The paper's mean input tokens per test instance (PromptIntern, Tables 2-4), to print beside the suite's.

Tables 2-4 give, per task and model, the tokens of five prompt configurations: template + k shots, template
×0.6 + k/2 shots, template only, no template, and PromptIntern. Token counts use each model family's
tokenizer; GPT-4 and GPT-3.5 (cl100k) have the same figures. ``promptintern tokens`` prints the cl100k
figures beside its own when it counts with cl100k (``--model openai:gpt-4``).
"""

from __future__ import annotations

from collections.abc import Mapping

#: The ``promptintern tokens`` configurations: method -> label (the label is the JSON key).
CONFIGURATIONS: dict[str, str] = {
    "zero-shot-full": "template + k-shots",
    "ft-compressed": "template x0.6 + k/2-shots",
    "ft-template": "template only",
    "ft-none": "no template",
    "promptintern": "PromptIntern (query only)",
}

#: Tables 2-4, tokens per configuration in :data:`CONFIGURATIONS` order, per task and model.
PAPER_INPUT_TOKENS: dict[str, dict[str, tuple[int, int, int, int, int]]] = {
    "mbpp": {
        "gpt-4": (1181, 424, 226, 43, 43),
        "gpt-3.5": (1181, 424, 226, 43, 43),
        "mixtral-8x7b": (1263, 453, 238, 54, 54),
        "llama2-13b": (1286, 471, 251, 58, 58),
        "llama2-7b": (1286, 471, 251, 58, 58),
    },
    "nl2f": {
        "gpt-4": (3540, 1838, 680, 286, 286),
        "gpt-3.5": (3540, 1838, 680, 286, 286),
        "mixtral-8x7b": (4204, 2191, 814, 339, 339),
        "llama2-13b": (4202, 2183, 812, 339, 339),
        "llama2-7b": (4202, 2183, 812, 339, 339),
    },
    "nl2bash": {
        "gpt-4": (1063, 810, 484, 52, 52),
        "gpt-3.5": (1063, 810, 484, 52, 52),
        "mixtral-8x7b": (1320, 1053, 603, 68, 68),
        "llama2-13b": (1244, 988, 574, 64, 64),
        "llama2-7b": (1244, 988, 574, 64, 64),
    },
}

#: The paper's k of the "template + k shots" column (the "x0.6" column uses k/2).
PAPER_SHOTS: dict[str, int] = {"mbpp": 5, "nl2f": 10, "nl2bash": 10}

#: The paper model whose figures match a tokenizer, by a substring of the counter's name.
TOKENIZER_MODELS: dict[str, str] = {"cl100k": "gpt-4"}


def paper_model_for(tokenizer: str) -> str | None:
    """The paper model counted with ``tokenizer`` (a counter name such as ``tiktoken/cl100k_base``), or None."""
    return next((model for key, model in TOKENIZER_MODELS.items() if key in tokenizer), None)


def paper_tokens(task: str, model: str = "gpt-4") -> dict[str, int]:
    """The paper's mean input tokens of ``task`` with ``model``'s tokenizer, by configuration label."""
    try:
        figures = PAPER_INPUT_TOKENS[task][model]
    except KeyError:
        raise ValueError(f"no paper token figures for task {task!r} and model {model!r}") from None
    return dict(zip(CONFIGURATIONS.values(), figures, strict=True))


def relative_difference(ours: float, paper: float) -> float:
    """``(ours - paper) / paper``: +0.10 means 10 % more tokens than the paper."""
    return (ours - paper) / paper


def compare(task: str, ours: Mapping[str, float], tokenizer: str) -> dict[str, object] | None:
    """The paper's figures beside ``ours`` (by configuration label) and the relative differences, or None
    when the paper has no figures for this tokenizer."""
    model = paper_model_for(tokenizer)
    if model is None or task not in PAPER_INPUT_TOKENS:
        return None
    paper = paper_tokens(task, model)
    return {
        "model": "GPT-4 / GPT-3.5" if model in ("gpt-4", "gpt-3.5") else model,
        "shots": PAPER_SHOTS[task],
        "mean_input_tokens": paper,
        "relative_difference": {k: relative_difference(ours[k], v) for k, v in paper.items() if k in ours},
    }
