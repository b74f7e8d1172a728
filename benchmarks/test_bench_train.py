"""One PromptIntern LoRA training step (``train_progressive``, one stage, one example, batch 1) on the bench model.

The example is a stage-1 prompt (MBPP template + 5 BLEU-retrieved shots + query, the longest PromptIntern
trains on) with its reference answer; LoRA r=32 / alpha=64 on q/k/v/o as in the ``cpu`` profile. Timed: the
whole call in a fresh output directory (base model load, LoRA creation, Trainer set-up, the step, saving the
adapter). ``extra_info``: the Trainer's own wall time for the step (``train_wall_s``), tokens, tokens/s, loss.
"""

import itertools
import json

from promptintern.methods.stages import TrainExample
from promptintern.prompting.prompt import build_prompt
from promptintern.prompting.retrieve import ExampleRetriever
from promptintern.training.trainer import TrainConfig, train_progressive

SHOTS = 5


def test_lora_step(benchmark, tmp_path, mbpp, bench_model_name, model_info, rounds):
    task, train, _ = mbpp
    target, bank = train[0], train[1:]
    shots = ExampleRetriever(bank).top_k(target, SHOTS)
    example = TrainExample(target.id, build_prompt(task, target, task.template(), shots), target.reference)
    round_ids = itertools.count()

    def setup():
        config = TrainConfig(
            model=bench_model_name,
            output_dir=tmp_path / f"round-{next(round_ids)}",
            lora_r=32,
            lora_alpha=64,
            batch_size=1,
            epochs_per_stage=1,
            save_steps=1000,
            logging_steps=1,
            device="cpu",
        )
        return (([[example]], config), {"progress": False})

    adapter = benchmark.pedantic(train_progressive, setup=setup, **rounds(3))
    metrics = json.loads((adapter.parent / "stage-1" / "metrics.json").read_text())
    benchmark.extra_info.update(
        model_info,
        steps=metrics["steps"],
        train_tokens=metrics["train_tokens"],
        prompt_tokens=metrics["prompt_tokens_max"],
        train_wall_s=round(metrics["wall_time_s"], 3),
        tokens_per_s=round(metrics["tokens_per_s"], 1),
        train_loss=metrics["train_loss"],
    )
    assert metrics["steps"] == 1 and (adapter / "adapter_model.safetensors").is_file()
