"""Decoding latency of a LoRA-tuned model served unmerged (peft wrapper) vs merged into the base weights.

PromptIntern and the direct-FT baselines serve a LoRA adapter (r=32 on q/k/v/o, the trainer's defaults). The
unmerged peft model runs two extra small matmuls per adapted projection on every token; ``merge_and_unload``
(``generation.merge_adapter``, on by default) folds them into the weights, so the tuned model decodes like its
base model. The adapter's B matrices are randomised (LoRA initialises them to zero) so the merge changes the
weights; both modes decode the same query-only MBPP prompt for exactly 16 new tokens.
"""

import pytest
import torch

from promptintern.prompting.prompt import build_prompt
from promptintern.serving.generate import generate
from promptintern.training.trainer import TrainConfig, lora_config

NEW = 16


@pytest.fixture(scope="module")
def lora_models(bench_model_name, mbpp):
    from peft import get_peft_model

    from promptintern.serving.models import load_model, load_tokenizer

    tok = load_tokenizer(bench_model_name)
    config = lora_config(TrainConfig(model=bench_model_name, output_dir="unused"))  # the trainer's defaults
    torch.manual_seed(0)
    unmerged = get_peft_model(load_model(bench_model_name, device="cpu"), config).eval()
    with torch.no_grad():
        for name, param in unmerged.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    merged = get_peft_model(load_model(bench_model_name, device="cpu"), config)
    merged.load_state_dict(unmerged.state_dict())
    merged = merged.merge_and_unload().eval()
    for model in (unmerged, merged):
        model.generation_config.min_new_tokens = NEW
    task, _, test = mbpp
    return {"unmerged": unmerged, "merged": merged}, tok, build_prompt(task, test[0]).render(tok)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_lora_decoding(benchmark, lora_models, model_info, rounds, mode):
    models, tok, prompt = lora_models
    model = models[mode]
    run = lambda: list(generate(model, tok, [prompt], max_new_tokens=NEW))  # noqa: E731
    (gen,) = benchmark.pedantic(run, **rounds(5, warmup=1))
    benchmark.extra_info.update(model_info, mode=mode, input_tokens=gen.input_tokens, output_tokens=gen.output_tokens)
    assert gen.output_tokens == NEW
