"""Decode and prefill speed of a LoRA-adapted embedded model on the two generation backends.

``hf``: transformers with the adapter merged into the de-quantized weights (how the runner serves a trained
adapter with ``merge_adapter: true``); ``llamacpp``: llama-cpp-python over the shipped Q4_1 GGUF with the
adapter as a GGUF LoRA (:mod:`promptintern.serving.llamacpp`). The adapter is a random rank-32 LoRA on the
attention projections (the profiles' shape); its values do not change the cost. ``decode``: a 32-token query-only
prompt then exactly ``NEW`` new tokens, one sequence (the end-of-turn token is suppressed on both backends);
``prefill``: a ~1,300-token full prompt then one token. Embedded model only (``PROMPTINTERN_BENCH_EMBEDDED=1``).
"""

import pytest
from conftest import use_embedded

NEW = 64
pytestmark = pytest.mark.skipif(not use_embedded(), reason="embedded model only (PROMPTINTERN_BENCH_EMBEDDED=1)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, mbpp):
    pytest.importorskip("llama_cpp")
    import torch
    from peft import LoraConfig, get_peft_model

    from promptintern.prompting.prompt import build_prompt
    from promptintern.prompting.retrieve import ExampleRetriever
    from promptintern.serving.llamacpp import LlamaCppGenerator, adapter_gguf, gguf_for
    from promptintern.serving.models import load_model, load_tokenizer

    tok = load_tokenizer("embedded")
    torch.manual_seed(0)
    lora = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft = get_peft_model(load_model("embedded"), lora)
    adapter = tmp_path_factory.mktemp("adapter") / "adapter"
    peft.save_pretrained(adapter)
    merged = peft.merge_and_unload().eval()
    merged.generation_config.min_new_tokens = NEW
    cpp = LlamaCppGenerator(gguf_for("embedded"), adapter_gguf(adapter, "embedded"), n_ctx=4096)
    task, train, test = mbpp
    full = build_prompt(task, test[0], task.template(), ExampleRetriever(train).top_k(test[0], 5)).render(tok)
    query = build_prompt(task, test[0]).render(tok)
    ids = {name: tok(text, add_special_tokens=False)["input_ids"] for name, text in (("decode", query), ("prefill", full))}
    return tok, merged, cpp, ids


def _hf(model, tok, ids, new):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    return out.shape[1] - len(ids)


def _cpp(cpp, tok, ids, new):
    cpp.llm.reset()
    out = cpp.llm.create_completion(prompt=list(ids), max_tokens=new, temperature=0.0, top_k=1,
                                    logit_bias={tok.eos_token_id: -1e9})  # fmt: skip
    return out["usage"]["completion_tokens"]


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_backend_speed(benchmark, served, rounds, model_info, backend, phase):
    tok, merged, cpp, ids = served
    new = NEW if phase == "decode" else 1
    run = (
        (lambda: _hf(merged, tok, ids[phase], new))
        if backend == "hf"
        else (lambda: _cpp(cpp, tok, ids[phase], new))
    )
    run()  # warm-up outside the timed rounds (first call allocates buffers)
    produced = benchmark.pedantic(run, **rounds(3))
    seconds = benchmark.stats.stats.mean
    tokens = produced if phase == "decode" else len(ids[phase])
    benchmark.extra_info.update(model_info, backend=backend, phase=phase, prompt_tokens=len(ids[phase]),
                                new_tokens=produced, tokens_per_s=tokens / seconds)  # fmt: skip
    assert produced == new


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_decode_step(benchmark, served, rounds, model_info, backend):
    """Pure decode speed: the query-only prompt then NEW + 1 tokens, minus the same prompt then 1 token, so the
    prompt's prefill and the first token cancel out; timed per round, both calls inside it."""
    import time

    tok, merged, cpp, ids = served
    gen = (
        (lambda n: _hf(merged, tok, ids["decode"], n))
        if backend == "hf"
        else (lambda n: _cpp(cpp, tok, ids["decode"], n))
    )
    gen(1)  # warm-up

    def step():
        t0 = time.perf_counter()
        gen(1)
        t1 = time.perf_counter()
        produced = gen(NEW + 1)
        t2 = time.perf_counter()
        return produced, (t2 - t1) - (t1 - t0)

    found = []
    benchmark.pedantic(lambda: found.append(step()), **rounds(3))
    decode_s = sum(d for _, d in found) / len(found)
    benchmark.extra_info.update(model_info, backend=backend, phase="decode_step", prompt_tokens=len(ids["decode"]),
                                decode_tokens=NEW, decode_s=decode_s, tokens_per_s=NEW / decode_s)  # fmt: skip
    assert all(p == NEW + 1 for p, _ in found)
