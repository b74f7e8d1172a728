"""The llamacpp backend: a peft LoRA adapter written as a GGUF LoRA and served by llama.cpp over the embedded
GGUF agrees with HF transformers serving the same adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from promptintern.serving.gguf_lora import AdapterExportError, export_gguf_lora, permute_rows


def _fake_adapter(path, *, r=2, hidden=16, n_head=4, n_kv=2, layers=1, modules=("q_proj", "k_proj", "v_proj")):
    from safetensors.numpy import save_file

    head = hidden // n_head
    out = {"q_proj": hidden, "k_proj": n_kv * head, "v_proj": n_kv * head}
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        for m in modules:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((out[m], r)).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 4}))
    config = {"model_type": "llama", "num_attention_heads": n_head, "num_key_value_heads": n_kv}
    return tensors, config


def test_rotary_row_permutation_interleaves_each_heads_halves():
    head, n_head = 6, 2
    w = np.arange(head * n_head, dtype=np.float32)[:, None]
    got = permute_rows(w, n_head)[:, 0]
    # within a head, HF keeps the rotary pairs as (first half, second half); llama.cpp interleaves them
    want = [h * head + j for h in range(n_head) for i in range(head // 2) for j in (i, head // 2 + i)]
    assert got.tolist() == want


def test_export_writes_llama_cpp_adapter_layout(tmp_path):
    import gguf

    tensors, config = _fake_adapter(tmp_path / "adapter")
    out = export_gguf_lora(tmp_path / "adapter", tmp_path / "a.gguf", config)
    reader = gguf.GGUFReader(str(out))
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 4.0
    written = {t.name: t for t in reader.tensors}
    assert set(written) == {f"blk.0.attn_{m}.weight.lora_{p}" for m in "qkv" for p in "ab"}
    a, b = written["blk.0.attn_q.weight.lora_a"], written["blk.0.attn_q.weight.lora_b"]
    assert list(a.shape) == [16, 2] and list(b.shape) == [2, 16]  # ggml ne: [in, rank] and [rank, out]
    prefix = "base_model.model.model.layers.0.self_attn"
    np.testing.assert_array_equal(np.asarray(b.data), permute_rows(tensors[f"{prefix}.q_proj.lora_B.weight"], 4))
    np.testing.assert_array_equal(
        np.asarray(written["blk.0.attn_k.weight.lora_b"].data), permute_rows(tensors[f"{prefix}.k_proj.lora_B.weight"], 2)
    )
    np.testing.assert_array_equal(np.asarray(written["blk.0.attn_v.weight.lora_b"].data), tensors[f"{prefix}.v_proj.lora_B.weight"])


def test_export_refuses_what_llama_cpp_cannot_serve(tmp_path):
    _, config = _fake_adapter(tmp_path / "adapter")
    with pytest.raises(AdapterExportError, match="only llama"):
        export_gguf_lora(tmp_path / "adapter", tmp_path / "a.gguf", config | {"model_type": "gpt2"})


@pytest.mark.integration
def test_llamacpp_serves_a_trained_adapter_like_hf(tmp_path):
    """First-step logits of HF (de-quantized GGUF weights + peft LoRA) and llama.cpp (the GGUF + the exported
    LoRA) on the same token ids: they disagree about as much with the adapter as without it (llama.cpp's
    quantized activations), far less than the adapter changes the logits, and llama.cpp's next token is among HF's
    top five."""
    pytest.importorskip("llama_cpp")
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model

    from promptintern.serving.llamacpp import adapter_gguf, gguf_for
    from promptintern.serving.models import load_model, load_tokenizer

    tok, base = load_tokenizer("embedded"), load_model("embedded")
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("[NL] list all files in the current directory [/NL]", "What is the capital of France?")
    ]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def hf(model):
        with torch.no_grad():
            return [model(torch.tensor([i])).logits[0, -1].float().numpy() for i in ids]

    base_logits = hf(base)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    for name, p in model.named_parameters():  # a large, random update so the adapter clearly moves the logits
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    lora_logits = hf(model)
    model.save_pretrained(tmp_path / "adapter")

    def cpp(lora):
        llm = Llama(model_path=str(gguf_for("embedded")), n_ctx=512, logits_all=True, verbose=False,
                    **({"lora_path": str(lora)} if lora else {}))  # fmt: skip
        out = []
        for i in ids:
            llm.reset()
            llm.eval(i)
            out.append(np.array(llm.scores[len(i) - 1]))
        return out

    base_cpp, lora_cpp = cpp(None), cpp(adapter_gguf(tmp_path / "adapter", "embedded"))
    for b, bc, lo, lc in zip(base_logits, base_cpp, lora_logits, lora_cpp, strict=True):
        noise, disagreement, effect = np.abs(bc - b).max(), np.abs(lc - lo).max(), np.abs(lo - b).max()
        print(f"max |llama.cpp - HF|: base {noise:.3f}, with LoRA {disagreement:.3f}; LoRA effect {effect:.3f}")
        assert effect > 2 * disagreement and disagreement < 2 * noise + 0.5
        assert np.corrcoef(lc, lo)[0, 1] > 0.99 and int(lc.argmax()) in np.argsort(lo)[-5:]


@pytest.mark.integration
def test_an_experiment_runs_on_the_llamacpp_backend():
    pytest.importorskip("llama_cpp")
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile

    smoke = load_profile("smoke")
    exp = Experiment("nl2bash", "zero-shot", smoke, backend_override="llamacpp", limit=2)
    hf = Experiment("nl2bash", "zero-shot", smoke, limit=2)
    assert exp.backend == "llamacpp" and exp.key != hf.key and exp.train_key == hf.train_key
    result = exp.evaluate(progress=False)
    assert result["backend"] == "llamacpp" and result["n"] == 2 and result["input_tokens_mean"] > 0
    assert Experiment("nl2bash", "gist", smoke, backend_override="llamacpp").backend == "hf"
    with pytest.raises(ValueError, match="unknown backend"):
        Experiment("nl2bash", "zero-shot", smoke, backend_override="tgi")


@pytest.mark.integration
def test_parallel_contexts_give_the_single_contexts_answers_in_prompt_order():
    pytest.importorskip("llama_cpp")
    from promptintern.serving.llamacpp import LlamaCppGenerator, gguf_for
    from promptintern.serving.models import load_tokenizer

    tok = load_tokenizer("embedded")
    questions = ["list all files", "count lines in a.txt", "show disk usage", "print the date", "find *.py files"]
    ids = [
        tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False)["input_ids"]
        for q in questions
    ]  # fmt: skip
    one = list(LlamaCppGenerator(gguf_for("embedded"), n_ctx=512).generate(ids, max_new_tokens=12))
    two = LlamaCppGenerator(gguf_for("embedded"), n_ctx=512, workers=2)
    assert len(two.contexts) == 2
    par = list(two.generate(ids, max_new_tokens=12))
    assert [g.text for g in par] == [g.text for g in one]
    assert [g.input_tokens for g in par] == [len(i) for i in ids]
    with pytest.raises(ValueError, match="workers"):
        LlamaCppGenerator(gguf_for("embedded"), workers=0)


@pytest.mark.integration
def test_prefix_reuse_evaluates_every_prompt_from_the_shared_prefix_whatever_came_before():
    """llama.cpp's logits depend on how a prompt is split into batches, so with prefix reuse each prompt must be
    evaluated from the same position whichever context serves it and whatever that context served before:
    the shared prefix alone once per context, then each prompt's rest (llama-cpp-python's own prefix match
    would start "list all the files" after "list all", shared with the prompt before it)."""
    pytest.importorskip("llama_cpp")
    from promptintern.serving.llamacpp import LlamaCppGenerator, gguf_for
    from promptintern.serving.models import load_tokenizer

    tok = load_tokenizer("embedded")
    questions = ["list all python files", "list all the files", "count lines in a.txt", "list all python files"]
    ids = [
        tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False)["input_ids"]
        for q in questions
    ]  # fmt: skip
    gen = LlamaCppGenerator(gguf_for("embedded"), n_ctx=512)
    starts: list[tuple[int, int]] = []  # (position, tokens) of every evaluation of a prompt's tokens
    real_eval = gen.llm.eval
    gen.llm.eval = lambda tokens: (starts.append((gen.llm.n_tokens, len(tokens))), real_eval(tokens))[1]
    shared = next(i for i, column in enumerate(zip(*ids, strict=False)) if len(set(column)) > 1)
    out = list(gen.generate(ids, max_new_tokens=6, reuse_prefix=True))
    prompt_evals = [s for s in starts if s[1] > 1]  # decoding evaluates one token at a time
    assert prompt_evals[0] == (0, shared)  # the shared prefix, on its own
    assert [s[0] for s in prompt_evals[1:]] == [shared] * len(ids)
    assert [g.cached_tokens for g in out] == [shared] * len(ids)
    assert out[3].text == out[0].text  # the same prompt after another: the same answer
    # a resumed run passes the whole subset's shared prefix; a prompt that does not start with it is refused
    again = list(gen.generate(ids[1:2], max_new_tokens=6, reuse_prefix=True, shared_prefix=shared))
    assert again[0].text == out[1].text and again[0].cached_tokens == shared
    with pytest.raises(ValueError, match="shared_prefix"):
        list(gen.generate([ids[0], [7, 8, 9]], max_new_tokens=2, reuse_prefix=True, shared_prefix=shared))
