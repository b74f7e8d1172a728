"""``--backend vllm``: the engine and sampling arguments (pure, no vLLM needed), the ``vllm serve`` command, and
the generator end to end against a fake ``vllm`` module put into ``sys.modules`` (vLLM itself needs a CUDA GPU)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from dataclasses import dataclass, field

import pytest

from promptintern.errors import UserError
from promptintern.serving import vllm_backend
from promptintern.serving.generate import Generation, deadline
from promptintern.serving.openai_backend import Decoding
from promptintern.serving.prefix_cache import CachedGeneration
from promptintern.serving.vllm_backend import (
    VLLMGenerator,
    VLLMUnavailable,
    adapter_rank,
    engine_kwargs,
    lora_rank_bound,
    sampling_kwargs,
    serve_command,
)

# -- a fake vllm ------------------------------------------------------------------------------------------------


@dataclass
class FakeCompletion:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = "stop"


@dataclass
class FakeRequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    outputs: list[FakeCompletion]
    finished: bool = True
    num_cached_tokens: int | None = None


@dataclass
class FakeLoRARequest:  # vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclass
class FakeEngine:
    """What the fake ``LLM`` class records: constructor kwargs, and each ``generate`` call."""

    answers: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    reverse: bool = False
    cached: int | None = None
    instances: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def module(self) -> tuple[types.ModuleType, types.ModuleType]:
        engine = self

        class LLM:
            def __init__(self, **kwargs):
                self.kwargs = kwargs
                engine.instances.append(self)

            def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
                engine.calls.append({"prompts": prompts, "params": sampling_params, "lora_request": lora_request})
                start = sum(len(c["prompts"]) for c in engine.calls[:-1])
                outs = []
                for i, prompt in enumerate(prompts):
                    ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else [ord(c) for c in prompt]
                    # the answer depends on the prompt (its first id), so a mix-up of the order shows
                    text, token_ids = engine.answers.get(ids[0], (f"answer to {ids[0]}", [7, 8]))
                    outs.append(
                        FakeRequestOutput(
                            str(start + i),
                            None if isinstance(prompt, dict) else prompt,
                            list(ids),
                            [FakeCompletion(0, text, list(token_ids))],
                            num_cached_tokens=engine.cached,
                        )
                    )
                return outs[::-1] if engine.reverse else outs

        vllm = types.ModuleType("vllm")
        vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
        vllm.__version__ = "0.0-fake"
        vllm.LLM, vllm.SamplingParams = LLM, FakeSamplingParams
        request = types.ModuleType("vllm.lora.request")
        request.LoRARequest = FakeLoRARequest
        return vllm, request


@pytest.fixture
def fake_vllm(monkeypatch):
    engine = FakeEngine()
    vllm, request = engine.module()
    lora = types.ModuleType("vllm.lora")
    lora.request = request
    vllm.lora = lora
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return engine


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "stage-3" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 32, "lora_alpha": 64, "peft_type": "LORA"}))
    return folder


# -- pure argument construction ---------------------------------------------------------------------------------


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    assert [lora_rank_bound(r) for r in (1, 8, 9, 16, 32, 33, 64, 300, 512)] == [8, 8, 16, 16, 32, 64, 64, 320, 512]
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            lora_rank_bound(bad)
    with pytest.raises(ValueError, match="above the largest rank vLLM serves"):
        lora_rank_bound(513)


def test_adapter_rank_reads_adapter_config(tmp_path, adapter):
    assert adapter_rank(adapter) == 32
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 48}}))
    assert adapter_rank(adapter) == 48
    (adapter / "adapter_config.json").write_text(json.dumps({"lora_alpha": 16}))
    with pytest.raises(ValueError, match="has no LoRA rank"):
        adapter_rank(adapter)
    with pytest.raises(ValueError, match="cannot read the LoRA rank"):
        adapter_rank(tmp_path / "missing")


def test_engine_kwargs_base_model_sets_prefix_caching_off_explicitly():
    assert engine_kwargs("/models/qwen", max_model_len=4096, seed=3) == {
        "model": "/models/qwen",
        "dtype": "bfloat16",
        "max_model_len": 4096,
        "seed": 3,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": False,
    }


def test_engine_kwargs_lora_prefix_caching_and_options():
    kwargs = engine_kwargs(
        "m", max_model_len=2048, lora_rank=24, prefix_caching=True, tensor_parallel_size=4,
        gpu_memory_utilization=0.8,
    )  # fmt: skip
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 32 and kwargs["max_loras"] == 1
    assert kwargs["enable_prefix_caching"] is True
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"]) == (4, 0.8)
    with pytest.raises(ValueError, match="max_model_len"):
        engine_kwargs("m", max_model_len=0)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_kwargs("m", max_model_len=8, tensor_parallel_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        engine_kwargs("m", max_model_len=8, gpu_memory_utilization=1.5)


def test_sampling_kwargs_paper_decoding_is_greedy_without_penalties():
    assert sampling_kwargs(max_new_tokens=64, stop=["\n\n", "", "```"], seed=5) == {
        "n": 1,
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 0.95,  # the paper's (Appendix A.2); vLLM ignores it at temperature 0
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,  # explicit: the model's generation_config.json must not add one
        "stop": ["\n\n", "```"],  # an empty stop string would end every answer at once
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }  # greedy: no seed


def test_sampling_kwargs_take_the_decoding_and_a_seed_when_sampling():
    decoding = Decoding(temperature=0.7, top_p=0.9, frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=1.1)
    kwargs = sampling_kwargs(max_new_tokens=8, decoding=decoding, seed=5)
    assert {k: kwargs[k] for k in ("temperature", "top_p", "frequency_penalty", "presence_penalty")} == {
        "temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.5, "presence_penalty": 0.25,
    }  # fmt: skip
    assert (kwargs["repetition_penalty"], kwargs["seed"], kwargs["stop"]) == (1.1, 5, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling_kwargs(max_new_tokens=0)


def test_serve_command_matches_the_engine_settings(adapter):
    command = serve_command(
        "Qwen/Qwen2.5-7B-Instruct", max_model_len=4096, adapters={"nl2bash-promptintern": adapter}, seed=0
    )
    assert command == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--dtype", "bfloat16", "--max-model-len", "4096",
        "--seed", "0", "--tensor-parallel-size", "1", "--no-enable-prefix-caching",
        "--enable-lora", "--max-lora-rank", "32", "--max-loras", "1",
        "--lora-modules", f"nl2bash-promptintern={adapter}",
        "--generation-config", "vllm", "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip
    base = serve_command("m", max_model_len=512, prefix_caching=True, port=9001)
    assert "--enable-prefix-caching" in base and "--enable-lora" not in base and base[-1] == "9001"
    with pytest.raises(ValueError, match="no '=' or spaces"):
        serve_command("m", max_model_len=512, adapters={"a=b": adapter})


# -- the generator against a fake vllm ---------------------------------------------------------------------------


def test_generator_builds_the_engine_and_lora_request_and_maps_outputs_in_order(fake_vllm, adapter):
    fake_vllm.answers = {101: ("ls -la\n\nExplanation: lists", [5, 6, 7, 8]), 202: ("pwd", [9])}
    fake_vllm.reverse = True  # the fake answers in reverse; the generator restores the prompts' order
    generator = VLLMGenerator("/models/base", adapter, max_model_len=4096, seed=7, lora_name="nl2bash-pi")
    (llm,) = fake_vllm.instances
    assert llm.kwargs == {
        "model": "/models/base",
        "dtype": "bfloat16",
        "max_model_len": 4096,
        "seed": 7,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": False,
        "enable_lora": True,
        "max_lora_rank": 32,  # read from adapter_config.json
        "max_loras": 1,
    }
    prompts = [[101, 1, 2], [202, 3], [303, 4, 5, 6, 7]]
    generations = list(generator.generate(prompts, max_new_tokens=16, stop=["\n\n"]))

    (call,) = fake_vllm.calls  # one engine call for the whole batch
    assert call["prompts"] == [{"prompt_token_ids": p} for p in prompts]
    assert call["lora_request"] == FakeLoRARequest("nl2bash-pi", 1, str(adapter.resolve()))
    assert call["params"].kwargs == sampling_kwargs(max_new_tokens=16, stop=["\n\n"])
    assert [g.text for g in generations] == ["ls -la", "pwd", "answer to 303"]  # cut at the stop string
    assert [(g.input_tokens, g.output_tokens) for g in generations] == [(3, 4), (2, 1), (5, 2)]
    assert all(type(g) is Generation and g.latency_s >= 0 for g in generations)
    assert len({g.latency_s for g in generations}) == 1  # the batch's wall time, shared
    assert generator.identity["lora"] is True and generator.identity["vllm"] == "0.0-fake"


def test_generator_without_adapter_text_prompts_and_prefix_caching(fake_vllm):
    fake_vllm.cached = 12
    generator = VLLMGenerator("m", max_model_len=1024, prefix_caching=True)
    (llm,) = fake_vllm.instances
    assert llm.kwargs["enable_prefix_caching"] is True and "enable_lora" not in llm.kwargs
    generations = list(generator.generate(["ab", "cd"], max_new_tokens=4))
    (call,) = fake_vllm.calls
    assert call["prompts"] == ["ab", "cd"] and call["lora_request"] is None
    assert call["params"].kwargs["stop"] == []
    assert [g.text for g in generations] == [f"answer to {ord('a')}", f"answer to {ord('c')}"]
    assert all(isinstance(g, CachedGeneration) and g.cached_tokens == 12 and g.input_tokens == 2 for g in generations)


def test_generator_lora_rank_option_empty_batch_close_and_deadline(fake_vllm, adapter):
    generator = VLLMGenerator("m", adapter, max_model_len=512, lora_rank=64, lora_name="x")
    assert fake_vllm.instances[0].kwargs["max_lora_rank"] == 64
    assert list(generator.generate([], max_new_tokens=4)) == [] and fake_vllm.calls == []
    with pytest.raises(ValueError, match="empty prompt"):
        generator.generate([[]], max_new_tokens=4)
    with deadline(-1.0), pytest.raises(Exception, match="past its deadline"):
        generator.generate([[1]], max_new_tokens=4)
    assert fake_vllm.calls == []
    generator.close()
    with pytest.raises(RuntimeError, match="closed"):
        generator.generate([[1]], max_new_tokens=4)


def test_a_short_answer_from_the_engine_is_an_error(fake_vllm, monkeypatch):
    generator = VLLMGenerator("m", max_model_len=512)
    real = generator.llm.generate
    monkeypatch.setattr(generator.llm, "generate", lambda *a, **k: real(*a, **k)[:1])
    with pytest.raises(RuntimeError, match="vLLM answered 1 of 2 prompts"):
        generator.generate([[1], [2]], max_new_tokens=4)


# -- vLLM missing -------------------------------------------------------------------------------------------------


def test_missing_vllm_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now fails as if it were not installed
    with pytest.raises(VLLMUnavailable, match=r"^--backend vllm needs vLLM \(and a CUDA GPU\): pip install 'promptintern\[vllm\]'$"):
        VLLMGenerator("m", max_model_len=512)
    assert issubclass(VLLMUnavailable, ImportError) and issubclass(VLLMUnavailable, UserError)
    assert "pip install 'promptintern[vllm]'" in vllm_backend.unavailable()


def test_a_broken_vllm_install_says_so(fake_vllm, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm.lora.request", None)
    with pytest.raises(VLLMUnavailable, match=r"^vLLM is installed but cannot be imported \(.*\); pip install"):
        VLLMGenerator("m", max_model_len=512)
    assert vllm_backend.unavailable() is None  # installed: the fake has a spec


# -- the harness on --backend vllm (the fake engine) ------------------------------------------------------------


def test_an_experiment_on_the_vllm_backend_predicts_through_one_engine_call(fake_vllm, tiny_model_dir, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """`--backend vllm`: the experiment builds the engine from the profile (context length, seed), sends the
    prompts as the token ids HF would see, in one call, and records the engine's answers in order."""
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile
    from promptintern.serving.models import load_tokenizer

    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path / "home"))
    exp = Experiment("nl2bash", "zero-shot", load_profile("smoke"), model=str(tiny_model_dir),
                     backend_override="vllm")  # fmt: skip
    assert exp.backend == "vllm" and exp.unavailable() is None
    scores = exp.evaluate(progress=False)
    (engine,) = fake_vllm.instances
    assert engine.kwargs["max_model_len"] == exp.context_length and engine.kwargs["seed"] == exp.profile.seed
    assert "enable_lora" not in engine.kwargs and len(fake_vllm.calls) == 1
    tok = load_tokenizer(str(tiny_model_dir))
    rendered = [p.render(tok) for p in exp.inference_prompts()]
    sent = fake_vllm.calls[0]["prompts"]
    assert len(sent) == len(exp.test_set)
    assert [p["prompt_token_ids"] for p in sent] == [tok(t, add_special_tokens=False)["input_ids"] for t in rendered]
    preds = [json.loads(line) for line in (exp.directory / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in preds] == [f"answer to {p['prompt_token_ids'][0]}" for p in sent]
    assert scores["n"] == len(exp.test_set)


def test_the_vllm_backend_without_vllm_is_not_run_with_the_install_hint(tiny_model_dir, monkeypatch):
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    exp = Experiment("nl2bash", "zero-shot", load_profile("smoke"), model=str(tiny_model_dir), backend_override="vllm")
    assert "promptintern[vllm]" in (exp.unavailable() or "")
