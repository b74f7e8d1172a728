"""Gist tokens baseline (Mu et al., NeurIPS 2023, "Learning to Compress Prompts with Gist Tokens").

As in Mu et al.: one new special token ``<GIST>`` is added to the vocabulary and ``num_gist`` copies of it are
inserted between the prompt to compress and the input; training uses *gist masking* (every token after the last
gist cannot attend to any token before the first gist, so everything the prefix says must pass through the gists'
activations), the loss is on the answer only, and at serving time only the gists' key/values are cached and the
prefix is dropped. The gist embedding starts at the mean of the existing embedding rows.

Differences: (1) LoRA (the PromptIntern stage machinery of :mod:`promptintern.training.trainer`, reused through
:class:`~promptintern.training.trainer.StageHooks`) plus a trainable gist embedding row (peft ``trainable_token_indices``,
which peft 0.21 supports together with LoRA: only the gist row is trained and saved, instead of the whole
embedding matrix that ``modules_to_save=["embed_tokens"]`` would train and save), instead of full fine-tuning;
(2) the compressed prefix is everything of the rendered prompt before the query (chat header, PromptIntern's
template and few-shot examples, the question header), not an Alpaca instruction; (3) tokens after the gists keep
their original positions (as if the prefix were still there), both in training (the masked full sequence) and
when decoding from the gist cache, so the two are the same computation; (4) LLaMA-family decoder-only models
with ``eager`` or ``sdpa`` attention (a 4-D mask reaches both unchanged in transformers 5: ``create_causal_mask``
returns 4-D masks as-is), greedy decoding (several prompts at once with ``batch_size``, queries left-padded).

Serving cost: ``input_tokens`` = ``num_gist`` + query tokens (the gist KV of a template is computed once and
cached, the paper's accounting); ``prefix_tokens`` is the compressed part. With ``cache_gists=True`` (default)
the gist KV of an identical prefix text is computed once per :func:`generate_gist` call and reused, and that time
is not charged to any instance's ``latency_s`` (``gist_s`` reports it where it was spent); ``cache_gists=False``
recomputes it for every prompt and charges it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from promptintern.io import write_json
from promptintern.methods.stages import TrainExample
from promptintern.prompting.prompt import Prompt
from promptintern.serving.generate import Generation, cut_at_stop
from promptintern.serving.models import load_model, load_tokenizer
from promptintern.training.collate import PadCollator
from promptintern.training.trainer import StageHooks, TrainConfig, is_main_process, train_progressive

GIST_TOKEN = "<GIST>"
SETTINGS_FILE = "gist.json"
_QUERY_SENTINEL = "@@GIST_QUERY_SENTINEL@@"
_MASK_IMPLEMENTATIONS = ("eager", "sdpa")


# ---------------------------------------------------------------- token, prompt, mask


def _add_token(tokenizer) -> int:
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(GIST_TOKEN, special=True, normalized=False)], special_tokens=True)
    return gist_token_id(tokenizer)


def gist_token_id(tokenizer) -> int:
    """The id of ``<GIST>`` in ``tokenizer``; ValueError if the tokenizer lacks it."""
    if GIST_TOKEN not in tokenizer.get_added_vocab():
        raise ValueError(f"tokenizer has no {GIST_TOKEN} token; call add_gist_token or load_gist_model first")
    return tokenizer.get_added_vocab()[GIST_TOKEN]


def add_gist_token(model, tokenizer) -> int:
    """Add ``<GIST>`` to ``tokenizer`` (if missing) and a row for it to ``model``; returns its id.

    The embedding is resized when it has no row for the id, and the gist row (and the lm_head row when it is not
    tied) is set to the mean of the rows of all tokens before it (all existing rows unless the vocabulary was
    padded). Deterministic, so adding it again to a fresh base model (at load time) gives the same row.
    """
    import torch

    gist_id = _add_token(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows <= gist_id:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:
                layer.weight[gist_id] = layer.weight[:gist_id].float().mean(0).to(layer.weight.dtype)
    return gist_id


def gist_prompt(prompt: Prompt, tokenizer, num_gist: int) -> tuple[str, str]:
    """The rendered ``prompt`` split at the query: (prefix + ``num_gist`` gist tokens, query + rest).

    The prompt is rendered with a sentinel in place of the query and split there, so any chat template (or plain
    text, ``tokenizer=None`` or one without a chat template) works; ``prefix + suffix`` is the usual render with
    the gists inserted right before the query.
    """
    if not isinstance(num_gist, int) or num_gist < 1:
        raise ValueError(f"num_gist must be a positive integer, got {num_gist!r}")
    text = replace(prompt, query=_QUERY_SENTINEL).render(tokenizer)
    if text.count(_QUERY_SENTINEL) != 1:
        raise ValueError(
            "cannot locate the query in the rendered prompt (the chat template drops or repeats it)"
        )
    head, tail = text.split(_QUERY_SENTINEL)
    if head + prompt.query + tail != prompt.render(tokenizer):
        raise ValueError("the chat template changes the query text; cannot split the prompt at the query")
    return head + GIST_TOKEN * num_gist, prompt.query + tail


def gist_attention_mask(input_ids, gist_id: int, attention_mask=None, dtype=None):
    """Mu et al.'s gist mask, shape (batch, 1, T, T), for a batch of ``input_ids`` (batch, T).

    Causal; keys where ``attention_mask`` (batch, T) is 0 are masked; a position after the last gist token cannot
    attend to any position before the first gist token. Rows without gist tokens are plain causal. ``dtype``
    float (default float32): additive mask (0 where allowed, the dtype's minimum elsewhere); ``torch.bool``:
    True where attention is allowed.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(ids.shape)}")
    batch, length = ids.shape
    pos = torch.arange(length, device=ids.device)
    is_gist = ids == gist_id
    first = torch.where(is_gist, pos, length).amin(1)[:, None, None]
    last = torch.where(is_gist, pos, -1).amax(1)[:, None, None]
    query, key = pos[None, :, None], pos[None, None, :]
    blocked = (query > last) & (key < first) & is_gist.any(1)[:, None, None]
    allowed = (key <= query) & ~blocked
    if attention_mask is not None:
        pad = torch.as_tensor(attention_mask, device=ids.device)
        if pad.dim() == 1:
            pad = pad[None]
        if tuple(pad.shape) != (batch, length):
            raise ValueError(
                f"attention_mask shape {tuple(pad.shape)} does not match input_ids {(batch, length)}"
            )
        allowed = allowed & pad.bool()[:, None, :]
    allowed = allowed[:, None]
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _for_attention(model, allowed):
    """A boolean (batch, 1, T, T) mask in the form ``model``'s attention takes (bool for sdpa, additive for eager)."""
    import torch

    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in _MASK_IMPLEMENTATIONS:
        raise ValueError(f"gist masking needs attention 'eager' or 'sdpa'; the model uses {impl!r}")
    if impl == "sdpa":
        return allowed
    dtype = model.get_input_embeddings().weight.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def model_gist_mask(model, input_ids, gist_id: int, attention_mask=None):
    """:func:`gist_attention_mask` in the dtype ``model``'s attention implementation needs (eager or sdpa)."""
    import torch

    return _for_attention(model, gist_attention_mask(input_ids, gist_id, attention_mask, dtype=torch.bool))


# ---------------------------------------------------------------- training


@dataclass
class GistCollator:
    """:class:`PadCollator` plus ``gist_mask``: the boolean gist mask of the padded batch (batch, 1, T, T).

    The training model gets it as its ``attention_mask`` through a forward pre-hook (:func:`use_gist_mask`);
    ``attention_mask`` stays 2-D in the batch so the Trainer's non-padding token count stays right.
    """

    pad_token_id: int
    gist_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        batch = PadCollator(self.pad_token_id)(features)
        batch["gist_mask"] = gist_attention_mask(
            batch["input_ids"], self.gist_id, batch["attention_mask"], dtype=torch.bool
        )
        return batch


def _swap_in_gist_mask(module, args, kwargs):
    mask = kwargs.pop("gist_mask", None)
    if mask is not None:
        kwargs["attention_mask"] = _for_attention(module, mask)
    return args, kwargs


def use_gist_mask(model):
    """Make ``model(..., gist_mask=M)`` use ``M`` (boolean, from :class:`GistCollator`) as its attention mask."""
    model.register_forward_pre_hook(_swap_in_gist_mask, with_kwargs=True)
    return model


def _prepare_for_training(model):
    # peft saves the whole (resized) embedding matrix by default when the vocabulary grew; the gist row is
    # already saved by trainable_token_indices and the base rows are rebuilt by add_gist_token at load time.
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return use_gist_mask(model)


def _prepare_base(model, tokenizer):
    add_gist_token(model, tokenizer)
    return model


def _render(prompt: Prompt, tokenizer, *, num_gist: int) -> str:
    return "".join(gist_prompt(prompt, tokenizer, num_gist))


def _collator(tokenizer, *, gist_id: int) -> GistCollator:
    return GistCollator(tokenizer.pad_token_id, gist_id)


def train_gist(
    stages: Sequence[Sequence[TrainExample]],
    config: TrainConfig,
    num_gist: int,
    *,
    progress: bool = True,
    callbacks: Sequence = (),
) -> Path:
    """Train a LoRA adapter + the gist embedding through ``stages``; returns ``output_dir/adapter``.

    Same layout, resume and refusal rules as :func:`promptintern.training.trainer.train_progressive` (``num_gist`` is
    fingerprinted too). The final adapter folder also holds the tokenizer with ``<GIST>`` and ``gist.json``.
    """
    if not isinstance(num_gist, int) or num_gist < 1:
        raise ValueError(f"num_gist must be a positive integer, got {num_gist!r}")
    tokenizer = load_tokenizer(config.model)
    gist_id = _add_token(tokenizer)
    settings = {"method": "gist", "num_gist": num_gist, "gist_token": GIST_TOKEN, "gist_id": gist_id}
    hooks = StageHooks(
        settings=settings,
        tokenizer=tokenizer,
        render=functools.partial(_render, num_gist=num_gist),
        prepare_base=_prepare_base,
        lora_options={"trainable_token_indices": [gist_id]},
        prepare_model=_prepare_for_training,
        collator=functools.partial(_collator, gist_id=gist_id),
    )
    final = train_progressive(stages, config, progress=progress, callbacks=callbacks, hooks=hooks)
    if is_main_process():
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(str(final))
        write_json(final / SETTINGS_FILE, settings, sort_keys=True)
    return final


def gist_settings(adapter_dir: str | Path) -> dict:
    """``gist.json`` of a trained gist adapter: num_gist, gist_token, gist_id."""
    path = Path(adapter_dir) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not an adapter written by train_gist")
    return json.loads(path.read_text())


def load_gist_model(
    model_name: str, adapter_dir: str | Path, *, device: str | None = None, dtype=None, merge: bool = True
):
    """Base model + gist row + adapter in eval mode, and the saved tokenizer (with ``<GIST>``, left padding).

    ``merge``: fold the LoRA weights into the base (``merge_and_unload``; the gist row is a plain embedding
    row either way). Unmerged, every linear layer runs its LoRA matmuls on each token: measured 9 vs 22
    decoded tok/s on the embedded model (2 cores, fp32).
    """
    from peft import PeftModel

    settings = gist_settings(adapter_dir)
    tokenizer = load_tokenizer(str(adapter_dir))
    base = load_model(model_name, device=device, dtype=dtype)
    gist_id = add_gist_token(base, tokenizer)
    if gist_id != settings["gist_id"]:
        raise ValueError(
            f"{adapter_dir}: tokenizer gives {GIST_TOKEN} id {gist_id}, gist.json {settings['gist_id']}"
        )
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return (model.merge_and_unload() if merge else model).eval(), tokenizer


# ---------------------------------------------------------------- inference


@dataclass
class GistGeneration(Generation):
    """A :class:`Generation` from the gist cache; ``input_tokens`` = num_gist + suffix (query) tokens.

    ``prefix_tokens``: tokens of the compressed prefix (before the gists); ``gist_s``: seconds spent computing
    the gist KV for this prompt (0 when reused); ``gist_reused``: the gist KV came from the cache.
    """

    prefix_tokens: int = 0
    num_gist: int = 0
    gist_s: float = 0.0
    gist_reused: bool = False
    output_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def uncompressed_tokens(self) -> int:
        """Tokens the model would read without gists: prefix + suffix."""
        return self.prefix_tokens + self.input_tokens - self.num_gist


def split_ids(tokenizer, prefix: str, suffix: str, num_gist: int) -> tuple[list[int], list[int]]:
    """Token ids of ``prefix + suffix`` (tokenised together, as in training) split after the last gist."""
    gist_id = gist_token_id(tokenizer)
    ids = tokenizer(prefix + suffix, add_special_tokens=False)["input_ids"]
    cut = max((i for i, t in enumerate(ids) if t == gist_id), default=-1) + 1
    if cut < num_gist or ids[cut - num_gist : cut] != [gist_id] * num_gist:
        raise ValueError(f"the tokenised prompt does not hold {num_gist} consecutive {GIST_TOKEN} tokens")
    if cut == len(ids):
        raise ValueError("the prompt has no tokens after the gist tokens (empty query)")
    return ids[:cut], ids[cut:]


def _gist_kv(model, prefix_ids: list[int], num_gist: int, device) -> list[tuple]:
    import torch

    ids = torch.tensor([prefix_ids], device=device)
    out = model(
        input_ids=ids, position_ids=torch.arange(len(prefix_ids), device=device)[None], use_cache=True
    )
    kept = []
    for layer in out.past_key_values.layers:
        if getattr(layer, "is_sliding", False):
            raise ValueError(
                "gist caching supports full-attention layers only (the model has sliding-window ones)"
            )
        kept.append((layer.keys[:, :, -num_gist:].clone(), layer.values[:, :, -num_gist:].clone()))
    return kept


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {eos} if eos is not None else set()


def _decode(model, tokenizer, kv, start: int, suffix_ids, max_new_tokens: int, eos, stop) -> list[int]:
    """Greedy decoding of ``suffix_ids`` + answer attending only to the gist KV; positions start at ``start``."""
    import torch
    from transformers import DynamicCache

    device = kv[0][0].device
    cache = DynamicCache(ddp_cache_data=kv)
    ids = torch.tensor([suffix_ids], device=device)
    pos = torch.arange(start, start + len(suffix_ids), device=device)[None]
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits
        token = int(logits[0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        if stop and any(s and s in tokenizer.decode(new, skip_special_tokens=True) for s in stop):
            break
        ids = torch.tensor([[token]], device=device)
        pos = pos[:, -1:] + 1
    return new


def _decode_batch(model, tokenizer, kvs, starts, suffixes, max_new_tokens: int, eos, stop) -> list[list[int]]:
    """:func:`_decode` for several prompts at once: each row attends to its own gist KV (``kvs[i]``, ``num_gist``
    tokens at their original positions) and its query, left-padded; positions continue from ``starts[i]``. A row
    stops at its end-of-sequence token or stop string; the batch ends when every row has."""
    import torch
    from transformers import DynamicCache

    device = kvs[0][0][0].device
    batch, width = len(suffixes), max(len(s) for s in suffixes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layers = [
        (torch.cat([kv[i][0] for kv in kvs]), torch.cat([kv[i][1] for kv in kvs])) for i in range(len(kvs[0]))
    ]
    cache = DynamicCache(ddp_cache_data=layers)
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in suffixes], device=device)
    query_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    gists = layers[0][0].shape[2]
    mask = torch.cat([torch.ones(batch, gists, dtype=query_mask.dtype, device=device), query_mask], dim=1)
    first = torch.tensor(starts, device=device)[:, None]
    pos = (first + (query_mask.cumsum(1) - 1).clamp(min=0)).long()
    new: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
        tokens = logits[:, -1].argmax(-1).tolist()
        for row, token in enumerate(tokens):
            if done[row]:
                continue
            new[row].append(token)
            text = tokenizer.decode(new[row], skip_special_tokens=True) if stop else ""
            done[row] = token in eos or any(s and s in text for s in stop)
        if all(done):
            break
        ids = torch.tensor([[t] for t in tokens], device=device)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
        pos = pos[:, -1:] + 1
    return new


def generate_gist(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    num_gist: int,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    cache_gists: bool = True,
    batch_size: int = 1,
) -> Iterator[GistGeneration]:
    """Yield one greedy :class:`GistGeneration` per prompt, decoding from the gists' key/values only.

    For each prompt the prefix + gists runs once (plain causal), only the gists' key/values are kept (original
    positions), then the query and the answer are decoded attending to them alone. ``cache_gists``: reuse the
    gist KV of an identical prefix text within this call, not charging its time to ``latency_s``.
    ``batch_size`` > 1 decodes that many prompts together (each with its own gist KV, queries left-padded);
    ``latency_s`` is then the batch's decoding time divided by its size, plus the prompt's own gist time when
    it is charged.
    """
    import torch

    gist_token_id(tokenizer)
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    store: dict[str, list[tuple]] = {}
    prompts = list(prompts)
    for first in range(0, len(prompts), max(1, batch_size)):
        rows = []
        for prompt in prompts[first : first + max(1, batch_size)]:
            prefix, suffix = gist_prompt(prompt, tokenizer, num_gist)
            prefix_ids, suffix_ids = split_ids(tokenizer, prefix, suffix, num_gist)
            reused = cache_gists and prefix in store
            with torch.no_grad():
                t0 = time.perf_counter()
                kv = store[prefix] if reused else _gist_kv(model, prefix_ids, num_gist, device)
                gist_s = 0.0 if reused else time.perf_counter() - t0
            if cache_gists:
                store[prefix] = kv
            rows.append((kv, len(prefix_ids), suffix_ids, gist_s, reused))
        with torch.no_grad():
            t1 = time.perf_counter()
            if len(rows) == 1:
                kv, start, suffix_ids = rows[0][:3]
                outputs = [_decode(model, tokenizer, kv, start, suffix_ids, max_new_tokens, eos, stop)]
            else:
                outputs = _decode_batch(model, tokenizer, [r[0] for r in rows], [r[1] for r in rows],
                                        [r[2] for r in rows], max_new_tokens, eos, stop)  # fmt: skip
            decoding = (time.perf_counter() - t1) / len(rows)
        for (_, start, suffix_ids, gist_s, reused), new in zip(rows, outputs, strict=True):
            text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
            yield GistGeneration(
                text,
                num_gist + len(suffix_ids),
                len(new),
                decoding + (0.0 if cache_gists else gist_s),
                prefix_tokens=start - num_gist,
                num_gist=num_gist,
                gist_s=gist_s,
                gist_reused=reused,
                output_ids=new,
            )


__all__ = [
    "GIST_TOKEN",
    "GistCollator",
    "GistGeneration",
    "add_gist_token",
    "generate_gist",
    "gist_attention_mask",
    "gist_prompt",
    "gist_settings",
    "gist_token_id",
    "load_gist_model",
    "model_gist_mask",
    "split_ids",
    "train_gist",
    "use_gist_mask",
]
