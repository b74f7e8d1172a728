"""Training throughput of one optimizer step on stage-1 PromptIntern prompts, naive vs the cheaper steps.

Data: 4 NL2Bash training instances, each prompt = the task's full template + 10 shots retrieved by BLEU of the
gold outputs (Eq. 3) + the query, with its reference answer: PromptIntern's first stage, the longest prompts it
trains on. One optimizer step over the 4 instances (an effective batch of 4), LoRA r=32 on q/k/v/o as in the
cpu profile, ``train_progressive`` in a fresh folder per round. Variants:

- ``naive``: batch 1 x 4 accumulation, the model's own forward (logits at every position);
- ``answer_head``: batch 1 x 4, LM head and loss at the answer positions only;
- ``answer_head_bf16``: ``answer_head`` with bfloat16 base weights (LoRA weights float32);
- ``shared_mask``: batch 4 packed into one sequence holding the shared template once, exact 4-D mask;
- ``shared_kv``: batch 4, the template run once and the 4 instances on its repeated key/value cache;
- ``shared_kv_bf16``: ``shared_kv`` with bfloat16 base weights (LoRA weights float32).
(Every variant but ``naive`` has the answer-only head.)

``extra_info``: instance tokens per second of the Trainer's own wall time (``tokens_per_s``: prompt + answer
tokens of the 4 instances / seconds, whatever the variant computes), the tokens the step actually computed, and
the step's loss (equal for the float32 variants up to float rounding). Embedded model only.

``test_bf16_loss_curve``: the bf16 decision. 16 instances, 2 epochs at batch 4 (8 steps), ``shared_kv``, float32
against bfloat16 base weights from the same LoRA initialisation; ``extra_info`` holds both loss curves, and the
test fails when a bf16 step's loss is more than 5 % away from float32's.
"""

import itertools
import json

import pytest
from conftest import use_embedded

from promptintern.methods.stages import TrainExample
from promptintern.prompting.prompt import build_prompt
from promptintern.prompting.retrieve import ExampleRetriever
from promptintern.training.trainer import TrainConfig, train_progressive

pytestmark = pytest.mark.skipif(
    not use_embedded(), reason="embedded model only (PROMPTINTERN_BENCH_EMBEDDED=1)"
)

SHOTS = 10
VARIANTS = {
    "naive": dict(batch_size=1, gradient_accumulation_steps=4, answer_only_head=False, shared_prefix="off"),
    "answer_head": dict(
        batch_size=1, gradient_accumulation_steps=4, answer_only_head=True, shared_prefix="off"
    ),
    "answer_head_bf16": dict(
        batch_size=1, gradient_accumulation_steps=4, shared_prefix="off", dtype="bfloat16"
    ),
    "shared_mask": dict(batch_size=4, gradient_accumulation_steps=1, shared_prefix="mask"),
    "shared_kv": dict(batch_size=4, gradient_accumulation_steps=1, shared_prefix="kv"),
    "shared_kv_bf16": dict(batch_size=4, gradient_accumulation_steps=1, shared_prefix="kv", dtype="bfloat16"),
}


@pytest.fixture(scope="module")
def stage_one():
    from promptintern.tasks import get_task

    task = get_task("nl2bash")
    train = task.load("train")
    retriever = ExampleRetriever(train, field="answer")
    return [
        TrainExample(
            inst.id, build_prompt(task, inst, task.template(), retriever.top_k(inst, SHOTS)), inst.reference
        )
        for inst in train[:4]
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stage_one_step(benchmark, tmp_path, stage_one, bench_model_name, model_info, rounds, variant):
    round_ids = itertools.count()

    def setup():
        config = TrainConfig(
            model=bench_model_name, output_dir=tmp_path / f"round-{next(round_ids)}", lora_r=32, lora_alpha=64,
            epochs_per_stage=1, save_steps=1000, logging_steps=1, device="cpu", **VARIANTS[variant],
        )  # fmt: skip
        return (([stage_one], config), {"progress": False})

    adapter = benchmark.pedantic(train_progressive, setup=setup, **rounds(2))
    metrics = json.loads((adapter.parent / "stage-1" / "metrics.json").read_text())
    benchmark.extra_info.update(
        model_info,
        variant=variant,
        steps=metrics["steps"],
        instance_tokens=metrics["train_tokens"],
        prompt_tokens_mean=metrics["prompt_tokens_mean"],
        train_wall_s=round(metrics["wall_time_s"], 3),
        tokens_per_s=round(metrics["tokens_per_s"], 1),
        computed_tokens_per_s=round(metrics["computed_tokens_per_s"], 1),
        shared_prefix=metrics["shared_prefix"],
        loss=metrics["train_loss"],
    )
    assert metrics["steps"] == 1


def test_bf16_loss_curve(benchmark, tmp_path, bench_model_name, model_info):
    from promptintern.tasks import get_task

    task = get_task("nl2bash")
    train = task.load("train")
    retriever = ExampleRetriever(train, field="answer")
    examples = [
        TrainExample(i.id, build_prompt(task, i, task.template(), retriever.top_k(i, SHOTS)), i.reference)
        for i in train[:16]
    ]
    curves, walls = {}, {}

    def run():
        for dtype in ("float32", "bfloat16"):
            config = TrainConfig(
                model=bench_model_name, output_dir=tmp_path / dtype, lora_r=32, lora_alpha=64, epochs_per_stage=2,
                batch_size=4, save_steps=1000, logging_steps=1, device="cpu", dtype=dtype, learning_rate=3e-4,
            )  # fmt: skip
            adapter = train_progressive([examples], config, progress=False)
            state = json.loads(
                next((adapter.parent / "stage-1").glob("checkpoint-*/trainer_state.json")).read_text()
            )
            curves[dtype] = [e["loss"] for e in state["log_history"] if "loss" in e]
            walls[dtype] = json.loads((adapter.parent / "stage-1" / "metrics.json").read_text())[
                "wall_time_s"
            ]

    benchmark.pedantic(run, rounds=1, iterations=1)
    gaps = [abs(b - f) / f for f, b in zip(curves["float32"], curves["bfloat16"], strict=True)]
    benchmark.extra_info.update(
        model_info, loss_float32=curves["float32"], loss_bfloat16=curves["bfloat16"], max_relative_gap=max(gaps),
        wall_float32_s=round(walls["float32"], 2), wall_bfloat16_s=round(walls["bfloat16"], 2),
    )  # fmt: skip
    assert len(gaps) == 8 and max(gaps) <= 0.05, gaps
