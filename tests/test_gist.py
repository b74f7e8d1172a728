"""Gist tokens baseline on the tiny Llama: mask pattern, mask reaching attention, gist row init, prompt split,
training (2 stages, resume, reload) and decoding from the gist cache against masked full-sequence decoding."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from promptintern.baselines.gist import (  # noqa: E402
    GIST_TOKEN,
    GistCollator,
    add_gist_token,
    generate_gist,
    gist_attention_mask,
    gist_prompt,
    gist_settings,
    gist_token_id,
    load_gist_model,
    model_gist_mask,
    split_ids,
    train_gist,
    use_gist_mask,
)
from promptintern.methods.stages import TrainExample  # noqa: E402
from promptintern.prompting.prompt import QUESTION_HEADER, Prompt  # noqa: E402
from promptintern.serving.models import load_model, load_tokenizer  # noqa: E402
from promptintern.training.trainer import DONE, ConfigMismatchError, TrainConfig, last_checkpoint  # noqa: E402

INSTRUCTION = "You are a calculator. Reply with the sum."
DOCUMENT = "API: add(a, b) returns a + b."
SHOTS = ("Q: 1 plus 2\nA: 3", "Q: 4 plus 4\nA: 8")
G = 9  # gist id in the hand-written masks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_tokenizer():
    from promptintern.testing import char_tokenizer

    return char_tokenizer()


def tiny_llama(tok, *, layers: int = 2, attn: str = "sdpa", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    settings = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlamaConfig(**{**settings, **overrides})
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


# ---------------------------------------------------------------- (1) mask pattern


def test_mask_pattern_by_hand():
    ids = torch.tensor(
        [
            [1, 2, G, G, 3, 4],  # two gists, no padding
            [1, G, 2, 3, 0, 0],  # one gist, right padding
            [1, 2, 3, 4, 5, 0],  # no gist: plain causal + padding
        ]
    )
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    expected = torch.tensor(
        [
            [
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 1],
            ],
            [
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 1, 1, 1, 0, 0],
                [0, 1, 1, 1, 0, 0],
                [0, 1, 1, 1, 0, 0],
            ],
            [
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
            ],
        ],
        dtype=torch.bool,
    )
    allowed = gist_attention_mask(ids, G, pad, dtype=torch.bool)
    assert allowed.shape == (3, 1, 6, 6) and allowed.dtype == torch.bool
    assert torch.equal(allowed[:, 0], expected)
    additive = gist_attention_mask(ids, G, pad)  # float32 by default
    assert additive.dtype == torch.float32
    assert torch.equal(additive[:, 0] == 0, expected)
    assert (additive[:, 0][~expected] == torch.finfo(torch.float32).min).all()
    half = gist_attention_mask(ids, G, pad, dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    # without a padding mask: row 1 is the same causal/gist pattern with its pad keys visible
    assert gist_attention_mask(ids[1], G, dtype=torch.bool)[0, 0, 5].tolist() == [0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="does not match"):
        gist_attention_mask(ids, G, pad[:, :5])


def test_collator_adds_the_gist_mask():
    batch = GistCollator(pad_token_id=0, gist_id=G)(
        [
            {"input_ids": [1, G, 2, 3], "labels": [-100, -100, 2, 3]},
            {"input_ids": [1, G], "labels": [-100, -100]},
        ]
    )
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]  # stays 2-D (Trainer token count)
    assert torch.equal(
        batch["gist_mask"],
        gist_attention_mask(batch["input_ids"], G, batch["attention_mask"], dtype=torch.bool),
    )
    assert batch["gist_mask"][0, 0, 3].tolist() == [False, True, True, True]


# ---------------------------------------------------------------- (2) the mask reaches the attention


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mask_reaches_attention(attn):
    """One layer: post-gist logits depend on the prefix only through the gists' *inputs*, so with the gist mask
    they must not move when the prefix changes (with 2+ layers the gists carry prefix information upward)."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok, layers=1, attn=attn)
    gist_id = add_gist_token(model, tok)
    a = tok("abcdefgh", add_special_tokens=False)["input_ids"]
    b = tok("zyxwvuts", add_special_tokens=False)["input_ids"]
    tail = [gist_id] * 2 + tok("Q: 1+2", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([a + tail, b + tail])
    post = slice(len(a) + 2, None)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=model_gist_mask(model, ids, gist_id)).logits
        plain = model(input_ids=ids).logits
        hooked = use_gist_mask(model)(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            gist_mask=gist_attention_mask(ids, gist_id, dtype=torch.bool),
        ).logits
    torch.testing.assert_close(masked[0, post], masked[1, post], rtol=0, atol=1e-5)
    assert (plain[0, post] - plain[1, post]).abs().max() > 1e-3  # without the mask the prefix leaks
    assert (masked[0, len(a)] - masked[1, len(a)]).abs().max() > 1e-3  # gists themselves read the prefix
    torch.testing.assert_close(hooked, masked, rtol=0, atol=1e-6)  # the training hook feeds the same mask


def test_unsupported_attention_is_refused():
    tok = tiny_tokenizer()
    model = tiny_llama(tok, layers=1)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="eager.*sdpa.*flash_attention_2"):
        model_gist_mask(model, torch.tensor([[1, 2]]), 3)


# ---------------------------------------------------------------- (3) gist row initialisation


@pytest.mark.parametrize("case", ["untied", "tied", "padded"])
def test_gist_row_is_the_mean(case):
    tok = tiny_tokenizer()
    n = len(tok)
    overrides = {"tie_word_embeddings": True} if case == "tied" else {}
    if case == "padded":
        overrides["vocab_size"] = n + 16
    model = tiny_llama(tok, **overrides)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    gist_id = add_gist_token(model, tok)
    assert gist_id == n and len(tok) == n + 1 and gist_token_id(tok) == gist_id
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == (n + 16 if case == "padded" else n + 1)
    torch.testing.assert_close(emb[gist_id], old_in[:n].mean(0))
    torch.testing.assert_close(head[gist_id], old_out[:n].mean(0))
    assert torch.equal(emb[:n], old_in[:n])
    if case == "tied":
        assert head.data_ptr() == emb.data_ptr()
    else:
        assert not torch.equal(emb[gist_id], head[gist_id])
    assert add_gist_token(model, tok) == gist_id and len(tok) == n + 1  # idempotent
    assert model.get_input_embeddings().weight.shape[0] == emb.shape[0]
    with pytest.raises(ValueError, match="no <GIST> token"):
        gist_token_id(tiny_tokenizer())


# ---------------------------------------------------------------- (4) prompt split


@pytest.mark.parametrize("chat", [True, False])
def test_gist_prompt_round_trips(chat):
    tok = tiny_tokenizer()
    if not chat:
        tok.chat_template = None
    full = Prompt(query="Q: 2 plus 3", instruction=INSTRUCTION, documents=DOCUMENT, examples=SHOTS)
    for prompt in (full, replace(full, examples=()), Prompt(query="Q: 2 plus 3")):
        prefix, suffix = gist_prompt(prompt, tok, 3)
        assert prefix.endswith(GIST_TOKEN * 3) and GIST_TOKEN not in prefix[: -3 * len(GIST_TOKEN)]
        assert prefix.replace(GIST_TOKEN, "") + suffix == prompt.render(tok)
        assert suffix.startswith(prompt.query)
    prefix, suffix = gist_prompt(full, tok, 2)
    assert prefix.endswith(f"{QUESTION_HEADER}\n{GIST_TOKEN}{GIST_TOKEN}")
    if chat:
        assert prefix.startswith(f"<|im_start|>system\n{INSTRUCTION}")
        assert suffix == "Q: 2 plus 3<|im_end|>\n<|im_start|>assistant\n"
        assert gist_prompt(Prompt(query="hi"), tok, 1) == (
            f"<|im_start|>user\n{GIST_TOKEN}",
            "hi<|im_end|>\n<|im_start|>assistant\n",
        )
    else:
        assert prefix.startswith(INSTRUCTION) and suffix == "Q: 2 plus 3\n"
        assert gist_prompt(full, None, 2) == (prefix, suffix)
    with pytest.raises(ValueError, match="num_gist"):
        gist_prompt(full, tok, 0)


def test_gist_prompt_refuses_a_template_that_rewrites_the_query():
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="query"):
        gist_prompt(Prompt(query="q: 1"), tok, 1)


# ---------------------------------------------------------------- (5) training


def make_stages(n: int = 6) -> list[list[TrainExample]]:
    items = [(f"ex{i}", f"Q: {i % 5} plus {i % 3}", str(i % 5 + i % 3)) for i in range(n)]
    return [
        [TrainExample(i, Prompt(query=q, instruction=INSTRUCTION, examples=SHOTS), a) for i, q, a in items],
        [TrainExample(i, Prompt(query=q, instruction=INSTRUCTION), a) for i, q, a in items],
    ]


def make_config(model_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        output_dir=output_dir,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=1e-2,
        epochs_per_stage=2,
        batch_size=2,
        save_steps=2,
        logging_steps=1,
        seed=5,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    stages = make_stages()
    config = make_config(tiny_model_dir, tmp_path_factory.mktemp("gist") / "run")
    return stages, config, train_gist(stages, config, 2, progress=False)


def test_train_gist_layout_loss_and_reload(trained, tiny_model_dir):
    stages, config, final = trained
    out = Path(config.output_dir)
    assert final == out / "adapter"
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["method"] == {"gist_id": 104, "gist_token": GIST_TOKEN, "method": "gist", "num_gist": 2}
    for i in (1, 2):
        metrics = json.loads((out / f"stage-{i}" / "metrics.json").read_text())
        assert metrics["steps"] == 6 and metrics["examples"] == 6
        assert all(
            torch.isfinite(torch.tensor(metrics[k])) for k in ("train_loss", "first_loss", "final_loss")
        )
        # non-padding tokens seen: the 2-D attention_mask still reaches the Trainer (not the 4-D gist mask)
        seen = metrics["tokens_per_s"] * metrics["wall_time_s"]
        assert seen == pytest.approx(2 * metrics["train_tokens"], rel=1e-6)
    assert gist_settings(final)["num_gist"] == 2

    tensors = load_file(str(final / "adapter_model.safetensors"))
    gist_keys = [k for k in tensors if "trainable_tokens" in k]
    assert gist_keys and any("lora_B" in k for k in tensors)
    assert all(t.shape[0] < 100 for t in tensors.values())  # the gist row only, not the whole embedding
    trained_row = tensors[gist_keys[0]][0]

    base = load_model(str(tiny_model_dir))
    mean_row = base.get_input_embeddings().weight[:104].mean(0)
    assert (trained_row - mean_row).abs().max() > 1e-4  # the gist embedding was trained
    model, tok = load_gist_model(str(tiny_model_dir), final)
    assert tok.padding_side == "left" and gist_token_id(tok) == 104 and not model.training
    row = model.get_input_embeddings()(torch.tensor([[104]]))[0, 0]
    torch.testing.assert_close(row, trained_row)

    # the adapter changed the model's answers compared to the untrained gist model
    prompt = stages[1][0].prompt
    fresh = load_model(str(tiny_model_dir))
    fresh_tok = load_tokenizer(str(tiny_model_dir))
    add_gist_token(fresh, fresh_tok)
    ids = torch.tensor([sum(split_ids(tok, *gist_prompt(prompt, tok, 2), 2), [])])
    with torch.no_grad():
        assert (model(input_ids=ids).logits - fresh(input_ids=ids).logits).abs().max() > 1e-3

    # merged (the default, faster decoding) and unmerged serve the same model
    unmerged, _ = load_gist_model(str(tiny_model_dir), final, merge=False)
    assert hasattr(unmerged, "peft_config") and not hasattr(model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, unmerged(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_train_gist_skips_done_stages_resumes_and_refuses_other_settings(trained, tmp_path):
    stages, config, final = trained
    out = Path(config.output_dir)
    stamps = [(out / f"stage-{i}" / DONE).stat().st_mtime_ns for i in (1, 2)]
    assert train_gist(stages, config, 2, progress=False) == final
    assert [(out / f"stage-{i}" / DONE).stat().st_mtime_ns for i in (1, 2)] == stamps
    with pytest.raises(ConfigMismatchError, match="num_gist"):
        train_gist(stages, config, 3, progress=False)

    # stage 2 cut off after its checkpoint at step 4: resuming trains steps 5-6 to the same adapter
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    stage = copy / "stage-2"
    for name in (DONE, "metrics.json"):
        (stage / name).unlink()
    shutil.rmtree(stage / "adapter")
    shutil.rmtree(stage / "checkpoint-6")
    assert last_checkpoint(stage).name == "checkpoint-4"
    resumed = train_gist(stages, replace(config, output_dir=copy), 2, progress=False)
    assert json.loads((stage / "metrics.json").read_text())["resumed_from"] == "checkpoint-4"
    got, want = (
        load_file(str(resumed / "adapter_model.safetensors")),
        load_file(str(final / "adapter_model.safetensors")),
    )
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


# ---------------------------------------------------------------- (6) decoding from the gist cache


def reference_decode(model, tok, prompt: Prompt, num_gist: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding of the whole sequence (prefix, gists, query, answer so far) under the gist mask."""
    gist_id = gist_token_id(tok)
    prefix_ids, suffix_ids = split_ids(tok, *gist_prompt(prompt, tok, num_gist), num_gist)
    ids, new = prefix_ids + suffix_ids, []
    eos = model.generation_config.eos_token_id
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        with torch.no_grad():
            token = int(
                model(input_ids=x, attention_mask=model_gist_mask(model, x, gist_id)).logits[0, -1].argmax()
            )
        new.append(token)
        ids.append(token)
        if token == eos:
            break
    return new


def sharp_gist_model(attn: str):
    """A tiny model with the gist token, weights drawn 10x larger than the usual init: attention is sharp, so a
    wrong position or a leaked prefix changes the greedy tokens."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok, attn=attn, initializer_range=0.2)
    add_gist_token(model, tok)
    return tok, model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_gists_equal_masked_full_sequence(attn):
    """Same tokens from the gist cache as from the masked full sequence. Weights drawn 10x larger than the usual
    init so that attention is sharp: a wrong position or a leaked prefix then changes the greedy tokens."""
    tok, model = sharp_gist_model(attn)
    template = dict(instruction=INSTRUCTION, documents=DOCUMENT, examples=SHOTS)
    prompts = [
        Prompt(query="Q: 2 plus 3", **template),
        Prompt(query="Q: 7 plus 1", **template),
        Prompt(query="Q: 7 plus 1", instruction="Add."),
    ]
    gens = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8))
    for prompt, gen in zip(prompts, gens, strict=True):
        want = reference_decode(model, tok, prompt, 3, 8)
        assert gen.output_ids == want and gen.output_tokens == len(want) == 8
        assert gen.text == tok.decode(want, skip_special_tokens=True)
        prefix, suffix = gist_prompt(prompt, tok, 3)
        assert gen.input_tokens == 3 + len(tok(suffix, add_special_tokens=False)["input_ids"])
        assert gen.prefix_tokens == len(tok(prefix, add_special_tokens=False)["input_ids"]) - 3
        assert gen.uncompressed_tokens == len(tok(prompt.render(tok), add_special_tokens=False)["input_ids"])
        assert gen.input_tokens < gen.uncompressed_tokens
    assert [g.gist_reused for g in gens] == [False, True, False]
    assert gens[1].gist_s == 0 and gens[0].gist_s > 0 and gens[2].gist_s > 0

    fresh = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8, cache_gists=False))
    assert [g.output_ids for g in fresh] == [g.output_ids for g in gens]
    assert not any(g.gist_reused for g in fresh) and all(g.latency_s >= g.gist_s > 0 for g in fresh)


def test_generate_gist_stop_strings_and_errors(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    prompt = Prompt(query="Q: 2 plus 3", instruction=INSTRUCTION)
    with pytest.raises(ValueError, match="no <GIST> token"):
        next(generate_gist(model, tok, [prompt], num_gist=2, max_new_tokens=4))
    add_gist_token(model, tok)
    (full,) = generate_gist(model, tok, [prompt], num_gist=2, max_new_tokens=10)
    assert len(full.text) >= 2
    stop = full.text[1]
    (cut,) = generate_gist(model, tok, [prompt], num_gist=2, max_new_tokens=10, stop=[stop])
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.output_ids == full.output_ids[: cut.output_tokens] and cut.output_tokens < full.output_tokens


@pytest.mark.integration
def test_embedded_model_gist_cache_matches_masked_sequence(tmp_path_factory):
    """SmolLM2 (tied embeddings, its own chat template): split, gist row and cached decoding on the real model."""
    from conftest import make_home

    from promptintern.serving.models import EMBEDDED, embedded_checkpoint
    from promptintern.tasks import get_task

    mp = pytest.MonkeyPatch()
    mp.setenv("PROMPTINTERN_HOME", str(make_home(tmp_path_factory, "embedded-home")))
    embedded_checkpoint.cache_clear()
    try:
        model, tok = load_model(EMBEDDED, device="cpu"), load_tokenizer(EMBEDDED)
    finally:
        embedded_checkpoint.cache_clear()
        mp.undo()
    rows = model.get_input_embeddings().weight.shape[0]
    mean = model.get_input_embeddings().weight[:rows].mean(0)
    gist_id = add_gist_token(model, tok)
    assert gist_id == rows and model.get_output_embeddings().weight.data_ptr() == (
        model.get_input_embeddings().weight.data_ptr()
    )
    torch.testing.assert_close(model.get_input_embeddings().weight[gist_id], mean)
    mbpp = Prompt(query="Write a function to add two numbers.", examples=SHOTS).with_template(
        get_task("mbpp").template()
    )
    prefix, suffix = gist_prompt(mbpp, tok, 4)
    assert prefix.replace(GIST_TOKEN, "") + suffix == mbpp.render(tok)
    assert suffix == f"{mbpp.query}<|im_end|>\n<|im_start|>assistant\n"
    # decoding on a short prompt (a full MBPP template costs minutes of a 2-core CPU for the reference path)
    prompt = Prompt(query="Q: 2 plus 3", instruction=INSTRUCTION, documents=DOCUMENT, examples=SHOTS)
    (gen,) = generate_gist(model, tok, [prompt], num_gist=4, max_new_tokens=4)
    assert gen.output_ids == reference_decode(model, tok, prompt, 4, 4)
    assert gen.input_tokens == 4 + len(tok(suffix.replace(mbpp.query, prompt.query))["input_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_gist_decoding_gives_the_one_at_a_time_answers(attn):
    """Left-padded queries of different lengths, each row on its own gist KV and positions: the same greedy
    tokens as decoding one prompt at a time (stop strings and early ends per row included)."""
    tok, model = sharp_gist_model(attn)
    template = dict(instruction=INSTRUCTION, documents=DOCUMENT, examples=SHOTS)
    prompts = [
        Prompt(query="Q: 2 plus 3", **template),
        Prompt(query="Q: 17 plus 21 and then some", **template),
        Prompt(query="Q: 7 plus 1", instruction="Add."),
        Prompt(query="Q: 9", **template),
        Prompt(query="Q: 4 plus 4", instruction="Add."),
    ]
    one = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8))
    for size in (2, 4):
        batched = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8, batch_size=size))
        assert [g.output_ids for g in batched] == [g.output_ids for g in one]
        assert [g.input_tokens for g in batched] == [g.input_tokens for g in one]
        assert [g.prefix_tokens for g in batched] == [g.prefix_tokens for g in one]
    stop = one[1].text[2]
    cut_one = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8, stop=[stop]))
    cut_batched = list(generate_gist(model, tok, prompts, num_gist=3, max_new_tokens=8, stop=[stop], batch_size=3))
    assert [g.text for g in cut_batched] == [g.text for g in cut_one]
    assert [g.output_ids for g in cut_batched] == [g.output_ids for g in cut_one]
