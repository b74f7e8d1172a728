"""The training step's loss, computed where it is needed: the LM head and the cross-entropy only at the
positions that predict an answer token.

A causal LM's forward computes ``vocab x hidden`` logits at EVERY position, although the loss only reads the
answer's (the prompt's labels are -100). For a 1,000-token prompt and a 60-token answer that is ~95 % of the
head's work and of its float32 ``L x 49,152`` logits, thrown away. :func:`answer_loss` runs the decoder, keeps
the hidden states of the positions whose NEXT token is labelled, and applies the head to those only; the loss
(summed cross-entropy over answer tokens / answer tokens in the optimizer step) is the model's own.

It also takes the batches of :class:`~promptintern.training.collate.SharedPrefixCollator`: with ``prefix_ids``
the shared prefix runs once and the rows run on its repeated key/value cache; with ``packed_mask`` (one packed
sequence) that mask is the 4-D attention mask (bool for SDPA, additive float for eager attention).
"""

from __future__ import annotations

IGNORE_INDEX = -100


def causal_lm(model):
    """The transformers causal LM inside ``model`` (a peft model or the LM itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def attention_mask_4d(mask, model, dtype):
    """``mask`` (bool, True = attend) as the model's attention implementation takes a custom 4-D mask."""
    import torch

    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return mask


def answer_loss(model, inputs: dict, num_items_in_batch=None):
    """Mean cross-entropy over the labelled (answer) tokens of ``inputs``, the head applied to those only.

    ``num_items_in_batch``: labelled tokens in the whole optimizer step (gradient accumulation), as the
    Trainer passes it; None = this batch's. ``inputs``: ``input_ids``, ``labels``, optionally
    ``attention_mask`` (2-D), ``position_ids`` and ``packed_mask`` (4-D bool, replaces ``attention_mask``).
    """
    import torch
    import torch.nn.functional as F

    lm = causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    labels = inputs["labels"]
    mask, positions, cache = inputs.get("attention_mask"), inputs.get("position_ids"), None
    if inputs.get("packed_mask") is not None:
        mask = attention_mask_4d(inputs["packed_mask"], lm, next(head.parameters()).dtype)
    prefix = inputs.get("prefix_ids")
    if prefix is not None and prefix.shape[1] > 0:
        cache, mask, positions = _prefix_cache(decoder, prefix, inputs["input_ids"], mask)
    hidden = decoder(
        input_ids=inputs["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    total = F.cross_entropy(logits, target[keep], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


def _prefix_cache(decoder, prefix, input_ids, mask):
    """Run the shared ``prefix`` once; its key/value cache repeated for each row of ``input_ids`` (gradients flow
    back through it), with the attention mask and position ids the rows need on top of it."""
    import torch

    cache = decoder(input_ids=prefix, use_cache=True).past_key_values
    rows, width, size = input_ids.shape[0], input_ids.shape[1], prefix.shape[1]
    cache.batch_repeat_interleave(rows)
    ones = torch.ones(rows, size, dtype=torch.long, device=input_ids.device)
    mask = torch.cat([ones, mask if mask is not None else torch.ones_like(input_ids)], dim=1)
    positions = torch.arange(size, size + width, device=input_ids.device).expand(rows, width)
    return cache, mask, positions
