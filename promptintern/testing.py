"""Tiny random models for tests and benchmarks (no download): a character-level ChatML tokenizer and a small
``LlamaForCausalLM`` saved like any HF checkpoint, so every code path that loads a model by path can run in
seconds on a CPU. Not for measuring quality."""

from __future__ import annotations

import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer():
    """A character-level fast tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable))}
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


def save_tiny_llama(
    path: str | Path,
    tokenizer=None,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised Llama (4 heads, 2 KV heads, MLP 2x hidden) and ``tokenizer`` (default
    :func:`char_tokenizer`) to ``path``; returns ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tokenizer if tokenizer is not None else char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_task_folder(root: Path, name: str = "reverse", n_train: int = 8, n_test: int = 4, **task_keys) -> Path:
    """A small folder task under ``root/name`` (no Python): reverse a word. ``task_keys`` replace keys of its
    ``task.yaml`` (a key set to None is removed). Returns the folder."""
    import json

    import yaml

    folder = Path(root) / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    words = ["apple", "banana", "cherry", "delta", "echo", "falcon", "guitar", "harbor", "island", "jungle",
             "kettle", "lemon", "meadow", "nickel", "orange", "pepper"]  # fmt: skip
    for split, rows in (("train", words[:n_train]), ("test", words[n_train : n_train + n_test])):
        lines = [json.dumps({"id": f"{split}-{i}", "word": w, "reversed": w[::-1]}) for i, w in enumerate(rows)]
        (folder / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {
        "name": name,
        "title": "Reverse",
        "description": "Reverse a word (a test task).",
        "data": {"train": "data/train.jsonl", "test": "data/test.jsonl"},
        "fields": {"id": "id", "query": "word", "answer": "reversed"},
        "query_format": "[W] {query} [/W]",
        "metric": "exact_match",
        "shots": 2,
        "max_new_tokens": 12,
        "stop": ["\n[W]"],
    }
    for key, value in task_keys.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    (folder / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    (folder / "documents.yaml").write_text(
        yaml.safe_dump([
            {"name": "reverse", "signature": "reverse(word)", "meaning": "the letters of word in reverse order",
             "example": "reverse(abc) = cba"},
            {"name": "length", "signature": "len(word)", "meaning": "the number of letters", "example": "len(abc) = 3"},
        ]),  # fmt: skip
        encoding="utf-8",
    )
    (folder / "template.yaml").write_text(
        yaml.safe_dump({
            "instruction": "You reverse words.\n+ Keep every letter.\nOutput format: the reversed word in a ```text block.",
            "documents": {"header": "Functions you may use:", "file": "documents.yaml"},
            "answer_format": "```text\n{answer}\n```",
        }),  # fmt: skip
        encoding="utf-8",
    )
    return folder
