"""Cheaper training steps: the answer-only LM head and the shared-prefix packed batch give the same loss and
the same LoRA gradients as the model's own forward on the padded batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from promptintern.serving.models import load_model, load_tokenizer  # noqa: E402
from promptintern.training.collate import (  # noqa: E402
    IGNORE_INDEX,
    PadCollator,
    SharedPrefixCollator,
    encode,
    shared_prefix_length,
)
from promptintern.training.loss import answer_loss  # noqa: E402

TEMPLATE = "<|im_start|>system\nYou add numbers. API: add(a, b) returns a + b.<|im_end|>\n<|im_start|>user\n"
QUERIES = [("3 plus 4", "7"), ("10 plus 25", "35"), ("1 plus 1 plus 1", "3")]


def _features(tok):
    out = []
    for query, answer in QUERIES:
        text = f"{TEMPLATE}{query}<|im_end|>\n<|im_start|>assistant\n"
        enc = encode(tok, text, answer, eot="<|im_end|>", max_length=4096)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    config = LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():  # B = 0 at init: give the adapter a non-zero effect
        if "lora_B" in name:
            param.data.normal_(0, 0.2)
    return model.train(), load_tokenizer(str(tiny_model_dir))


def _loss_and_grads(model, loss_fn):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_shared_prefix_is_the_template_and_never_an_answer(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    feats = _features(tok)
    n = shared_prefix_length(feats)
    assert tok.decode(feats[0]["input_ids"][:n]) == TEMPLATE
    # an instance whose prompt IS the common part keeps its last prompt token to itself
    short = {"input_ids": feats[0]["input_ids"][:n] + [5, 6], "labels": [IGNORE_INDEX] * n + [5, 6]}
    assert shared_prefix_length([feats[1], short]) == n - 1
    assert shared_prefix_length([feats[0]]) < len(feats[0]["input_ids"])


def test_packed_mask_and_positions_are_each_instances_own(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    feats = _features(tok)
    n = shared_prefix_length(feats)
    batch = SharedPrefixCollator(layout="mask")(feats)
    lengths = [len(f["input_ids"]) - n for f in feats]
    assert batch["input_ids"].shape == (1, n + sum(lengths))
    mask = batch["packed_mask"][0, 0]
    start = n
    for f, length in zip(feats, lengths, strict=True):
        end = start + length
        assert batch["input_ids"][0, start:end].tolist() == f["input_ids"][n:]
        assert batch["position_ids"][0, start:end].tolist() == list(range(n, n + length))
        rows = mask[start:end]
        assert rows[:, :n].all() and not rows[:, n:start].any() and not rows[:, end:].any()
        assert torch.equal(rows[:, start:end], torch.ones(length, length, dtype=torch.bool).tril())
        start = end


def test_kv_layout_holds_the_prefix_once_and_each_rest_padded(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    feats = _features(tok)
    n = shared_prefix_length(feats)
    batch = SharedPrefixCollator(tok.pad_token_id)(feats)
    assert batch["prefix_ids"][0].tolist() == feats[0]["input_ids"][:n]
    rest = PadCollator(tok.pad_token_id)([{k: f[k][n:] for k in ("input_ids", "labels")} for f in feats])
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(batch[key], rest[key])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_answer_only_and_shared_prefix_gradients_equal_the_full_forward(lora_model, attn):
    model, tok = lora_model
    model.get_base_model().config._attn_implementation = attn
    feats = _features(tok)
    padded = PadCollator(tok.pad_token_id)(feats)
    shared = [SharedPrefixCollator(tok.pad_token_id, layout)(feats) for layout in ("kv", "mask")]
    assert shared_prefix_length(feats) > 20  # the test shares something

    def full():  # the model's own loss: logits at every position
        return model(**padded).loss

    ref_loss, ref_grads = _loss_and_grads(model, full)
    for batch in (padded, *shared):
        loss, grads = _loss_and_grads(model, lambda b=batch: answer_loss(model, b))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert ref_grads.keys() == grads.keys() and ref_grads
        for name, grad in ref_grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.get_base_model().config._attn_implementation = "sdpa"


def test_loss_is_normalised_by_the_optimizer_steps_answer_tokens(lora_model):
    model, tok = lora_model
    batch = PadCollator(tok.pad_token_id)(_features(tok))
    with torch.no_grad():
        mean = answer_loss(model, batch)
        labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        torch.testing.assert_close(answer_loss(model, batch, num_items_in_batch=2 * labelled), mean / 2)
