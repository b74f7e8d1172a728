"""Progressive LoRA training on the tiny Llama: label masking, learning, layout, kill-and-resume, refusal."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from promptintern.prompting.prompt import Prompt  # noqa: E402
from promptintern.serving.models import load_tokenizer  # noqa: E402
from promptintern.training.collate import IGNORE_INDEX, PadCollator, encode, end_of_turn  # noqa: E402
from promptintern.training.trainer import (  # noqa: E402
    DONE,
    ConfigMismatchError,
    TrainConfig,
    TrainExample,
    last_checkpoint,
    load_for_inference,
    train_progressive,
)

INSTRUCTION = "You are a calculator. Reply with the sum of the two numbers and nothing else."
DOCUMENT = "API: add(a, b) returns a + b. Numbers are small non-negative integers."
SHOTS = ("Q: 1 plus 2\nA: 3", "Q: 4 plus 4\nA: 8")


def make_stages(n: int = 16) -> list[list[TrainExample]]:
    """Three stages over the same instances: full template + 2 shots, short template + 1 shot, query only."""
    items = [(f"ex{i}", f"Q: {i % 5} plus {i % 3}", str(i % 5 + i % 3)) for i in range(n)]
    prompts = [
        lambda q: Prompt(query=q, instruction=INSTRUCTION, documents=DOCUMENT, examples=SHOTS),
        lambda q: Prompt(query=q, instruction="Add the numbers.", examples=SHOTS[:1]),
        lambda q: Prompt(query=q),
    ]
    return [[TrainExample(i, make(q), a) for i, q, a in items] for make in prompts]


def make_config(model_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        output_dir=output_dir,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        learning_rate=5e-3,
        epochs_per_stage=2,
        batch_size=4,
        save_steps=2,
        logging_steps=1,
        seed=3,
    )
    return TrainConfig(**{**base, **overrides})


def adapter_tensors(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """One uninterrupted 3-stage run: (stages, config, final adapter path)."""
    stages = make_stages()
    config = make_config(tiny_model_dir, tmp_path_factory.mktemp("ref") / "run")
    return stages, config, train_progressive(stages, config, progress=False)


def test_labels_mask_exactly_the_prompt(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    eot = end_of_turn(tok)
    assert eot == "<|im_end|>"
    prompt = make_stages()[0][3].prompt
    rendered = prompt.render(tok)
    enc = encode(tok, rendered, "42", eot=eot, max_length=4096)
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids
    assert enc.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert labelled == enc.input_ids[len(prompt_ids) :] == enc.labels[len(prompt_ids) :]
    assert tok.decode(labelled) == "42<|im_end|>"
    assert not enc.truncated

    with pytest.raises(ValueError, match="fit_prompt"):  # never cut: prompts are fitted when built
        encode(tok, rendered, "42", eot=eot, max_length=20)
    with pytest.raises(ValueError, match="no room"):
        encode(tok, rendered, "12345", eot=eot, max_length=6)

    batch = PadCollator(tok.pad_token_id)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tok.pad_token_id, tok.pad_token_id]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_progressive_run_layout_learning_and_rerun(reference, tiny_model_dir):
    stages, config, final = reference
    out = Path(config.output_dir)
    assert final == out / "adapter" and (final / "adapter_config.json").is_file()
    recorded = json.loads((out / "config.json").read_text())
    assert len(recorded["stages"]) == 3 and "output_dir" not in recorded["config"]
    metrics = []
    for i in (1, 2, 3):
        stage = out / f"stage-{i}"
        assert (stage / DONE).is_file() and (stage / "adapter" / "adapter_model.safetensors").is_file()
        assert last_checkpoint(stage) is not None
        metrics.append(json.loads((stage / "metrics.json").read_text()))
    assert [m["examples"] for m in metrics] == [16, 16, 16]
    assert (
        metrics[0]["prompt_tokens_mean"] > metrics[1]["prompt_tokens_mean"] > metrics[2]["prompt_tokens_mean"]
    )
    assert all(m["steps"] == 8 and m["resumed_from"] is None for m in metrics)
    # the adapter learns on the repeated data and carries over: loss keeps falling across stages
    assert metrics[0]["final_loss"] < metrics[0]["first_loss"]
    assert metrics[2]["final_loss"] < metrics[0]["first_loss"]
    # LoRA B starts at zero: every stage moved it, and stage i+1 continued from stage i's adapter
    tensors = [adapter_tensors(out / f"stage-{i}" / "adapter") for i in (1, 2, 3)]
    b_keys = [k for k in tensors[0] if "lora_B" in k]
    assert b_keys and all(tensors[0][k].abs().sum() > 0 for k in b_keys)
    assert any(not torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    final_tensors = adapter_tensors(final)
    assert all(torch.equal(final_tensors[k], tensors[2][k]) for k in final_tensors)

    model, tok = load_for_inference(config)
    assert not model.training
    base, _ = load_for_inference(str(tiny_model_dir), final, merge=True)
    enc = tok([stages[2][0].prompt.render(tok)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, base(**enc).logits, atol=1e-5)

    stamp = (out / "stage-3" / DONE).stat().st_mtime_ns
    assert train_progressive(stages, config, progress=False) == final  # everything done: skipped
    assert (out / "stage-3" / DONE).stat().st_mtime_ns == stamp


def test_config_or_data_change_refuses_to_resume(reference):
    stages, config, _ = reference
    with pytest.raises(ConfigMismatchError, match="learning_rate"):
        train_progressive(stages, replace(config, learning_rate=1e-3), progress=False)
    changed = [stages[0], [replace(stages[1][0], answer="x"), *stages[1][1:]], stages[2]]
    with pytest.raises(ConfigMismatchError, match="stage 2 dataset differs"):
        train_progressive(changed, config, progress=False)
    with pytest.raises(ConfigMismatchError, match="number of stages"):
        train_progressive(stages[:2], config, progress=False)


KILLER = textwrap.dedent(
    """
    import os, pickle, signal, sys
    import torch
    from transformers import TrainerCallback
    from promptintern.training.trainer import train_progressive

    torch.set_num_threads(int(sys.argv[3]))
    stage, step = sys.argv[2].split(":")

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if args.output_dir.endswith("stage-" + stage) and state.global_step == int(step):
                os.kill(os.getpid(), signal.SIGKILL)

    with open(sys.argv[1], "rb") as fh:
        stages, config = pickle.load(fh)
    train_progressive(stages, config, progress=False, callbacks=[Kill()])
    """
)


@pytest.mark.parametrize(("kill_at", "checkpoint"), [("1:3", "checkpoint-2"), ("2:5", "checkpoint-4")])
def test_killed_run_resumes_to_the_same_adapter(reference, tmp_path, kill_at, checkpoint):
    """SIGKILL at stage:step (save_steps=2), resume in-process: same final adapter as the uninterrupted run."""
    stages, ref_config, ref_final = reference
    config = replace(ref_config, output_dir=tmp_path / "run")
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((stages, config)))
    (tmp_path / "killer.py").write_text(KILLER)
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "killer.py"),
            str(tmp_path / "job.pkl"),
            kill_at,
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    stage = config.output_dir / f"stage-{kill_at[0]}"
    assert not (stage / DONE).exists() and last_checkpoint(stage).name == checkpoint
    assert all((config.output_dir / f"stage-{i}" / DONE).is_file() for i in range(1, int(kill_at[0])))

    final = train_progressive(stages, config, progress=False)
    assert json.loads((stage / "metrics.json").read_text())["resumed_from"] == checkpoint
    got, want = adapter_tensors(final), adapter_tensors(ref_final)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


def test_gradient_checkpointing_trains_the_same_adapter(reference, tiny_model_dir, tmp_path):
    """Checkpointing recomputes activations in the backward pass: the same gradients, so (dropout off, same seed)
    the same adapter up to float rounding; it is left out of the run key (same memory-free fingerprint)."""
    stages = [s[:8] for s in make_stages()][:1]
    plain = make_config(tiny_model_dir, tmp_path / "plain", lora_dropout=0.0, epochs_per_stage=1)
    ckpt = replace(plain, output_dir=tmp_path / "ckpt", gradient_checkpointing=True)
    a = adapter_tensors(train_progressive(stages, plain, progress=False))
    b = adapter_tensors(train_progressive(stages, ckpt, progress=False))
    assert a.keys() == b.keys() and any(t.abs().sum() > 0 for k, t in a.items() if "lora_B" in k)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    cfg = [json.loads((tmp_path / d / "config.json").read_text())["config"] for d in ("plain", "ckpt")]
    assert cfg[0] == cfg[1] and "gradient_checkpointing" not in cfg[0]


def test_four_bit_base_needs_cuda_and_says_so(tiny_model_dir, tmp_path):
    config = make_config(tiny_model_dir, tmp_path / "q", quantization="4bit", device="cpu")
    with pytest.raises(ValueError, match=r"train\.quantization '4bit' needs a CUDA device"):
        train_progressive(make_stages(4)[:1], config, progress=False)


def test_on_cuda_the_memory_estimate_is_printed_and_a_config_that_cannot_fit_stops_first(tiny_model_dir, tmp_path,
                                                                                        monkeypatch, capsys):  # fmt: skip
    """The check runs before any model is loaded: a (pretended) 1 GiB GPU cannot hold the estimate's fixed
    workspace, so training stops with the one-line error; an 80 GiB one prints the estimate and goes on."""
    from types import SimpleNamespace

    from promptintern.training.memory import DoesNotFitError
    from promptintern.training.trainer import check_memory

    gpu = SimpleNamespace(total_memory=1 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    config = make_config(tiny_model_dir, tmp_path / "m")
    check_memory(config, "cpu")  # no GPU: nothing to check
    with pytest.raises(DoesNotFitError, match="more than the 1 GiB GPU"):
        check_memory(config, "cuda:0")
    gpu.total_memory = 80 * 2**30
    check_memory(config, "cuda:0")
    assert "training memory estimate" in capsys.readouterr().err
