"""Stages shared between runs (chain keys) and the optimizer across stages (continuous | restart)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from test_train import make_config, make_stages  # noqa: E402

from promptintern.training.chain import plan_stages, stage_steps  # noqa: E402
from promptintern.training.trainer import DONE, train_progressive  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lrs(stage_dir) -> list[float]:
    state = json.loads(max(stage_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])).joinpath(
        "trainer_state.json").read_text())  # fmt: skip
    return [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]


def test_step_counts_match_the_trainer():
    assert stage_steps(16, batch_size=4, accumulation=1, epochs=2) == 8
    assert stage_steps(8, batch_size=1, accumulation=4, epochs=1) == 2
    assert stage_steps(9, batch_size=1, accumulation=4, epochs=1) == 3
    assert stage_steps(3, batch_size=4, accumulation=4, epochs=0.5) == 1
    assert stage_steps(16, batch_size=2, accumulation=1, epochs=1, world_size=2) == 4


def test_chain_keys_depend_on_everything_before_and_the_schedule():
    config = {"lr": 1}
    a = plan_stages(config, None, ["d1", "d2", "d3"], [4, 4, 4], "continuous")
    b = plan_stages(config, None, ["d1", "d2", "x3"], [4, 4, 4], "continuous")
    assert [p.key for p in a[:2]] == [p.key for p in b[:2]] and a[2].key != b[2].key
    assert [(p.offset, p.total) for p in a] == [(0, 12), (4, 12), (8, 12)]
    # continuous: a longer last stage changes the LR every stage sees, so nothing is shared
    c = plan_stages(config, None, ["d1", "d2", "d3"], [4, 4, 8], "continuous")
    assert all(x.key != y.key for x, y in zip(a, c, strict=True))
    # restart: stage i depends only on what came before it
    r1 = plan_stages(config, None, ["d1", "d2", "d3"], [4, 4, 4], "restart")
    r2 = plan_stages(config, None, ["d1", "d2", "d3"], [4, 4, 8], "restart")
    assert [p.key for p in r1[:2]] == [p.key for p in r2[:2]] and r1[2].key != r2[2].key
    assert plan_stages({"lr": 2}, None, ["d1"], [4], "restart")[0].key != r1[0].key
    assert plan_stages(config, {"num_gist": 1}, ["d1"], [4], "restart")[0].key != r1[0].key
    with pytest.raises(ValueError, match="continuous"):
        plan_stages(config, None, ["d1"], [4], "sometimes")


def test_shared_leading_stage_is_trained_once(tiny_model_dir, tmp_path):
    stages = make_stages(8)
    root = tmp_path / "stages"
    first = make_config(tiny_model_dir, tmp_path / "a", stage_root=root, epochs_per_stage=1, save_steps=100)
    train_progressive(stages, first, progress=False)
    assert len(list(root.glob("stage1-*"))) == 1
    stamp = next(root.glob("stage1-*")).joinpath(DONE).stat().st_mtime_ns
    # another run: same stage 1 and 2, another stage 3 -> stages 1-2 reused, stage 3 trained
    other = [stages[0], stages[1], [replace(ex, answer=ex.answer + "!") for ex in stages[2]]]
    second = replace(first, output_dir=tmp_path / "b")
    train_progressive(other, second, progress=False)
    assert next(root.glob("stage1-*")).joinpath(DONE).stat().st_mtime_ns == stamp
    assert len(list(root.glob("stage1-*"))) == len(list(root.glob("stage2-*"))) == 1
    assert len(list(root.glob("stage3-*"))) == 2
    for i in (1, 2):
        assert (tmp_path / "a" / f"stage-{i}").resolve() == (tmp_path / "b" / f"stage-{i}").resolve()
    assert (tmp_path / "a" / "stage-3").resolve() != (tmp_path / "b" / "stage-3").resolve()
    recorded = [json.loads((tmp_path / r / "config.json").read_text())["stages"] for r in "ab"]
    assert recorded[0][0]["key"] == recorded[1][0]["key"] and recorded[0][2]["key"] != recorded[1][2]["key"]


def test_continuous_carries_optimizer_and_schedule_restart_does_not(tiny_model_dir, tmp_path):
    stages = make_stages(8)  # 3 stages x 2 steps (batch 4, 1 epoch)
    base = dict(epochs_per_stage=1, save_steps=1, logging_steps=1, save_total_limit=None)
    cont = make_config(tiny_model_dir, tmp_path / "c", optimizer="continuous", shared_prefix="kv", **base)
    rest = make_config(tiny_model_dir, tmp_path / "r", optimizer="restart", shared_prefix="mask", **base)
    train_progressive(stages, cont, progress=False)
    train_progressive(stages, rest, progress=False)
    lr = cont.learning_rate
    # the LR each step used: linear decay over the 6 steps of all stages vs over each stage's 2 steps
    got = [_lrs(tmp_path / "c" / f"stage-{i}") for i in (1, 2, 3)]
    want = [[lr * (6 - s) / 6 for s in steps] for steps in ((0, 1), (2, 3), (4, 5))]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-6)
    assert _lrs(tmp_path / "r" / "stage-2") == pytest.approx([lr, lr / 2], rel=1e-6)
    # AdamW's step count runs on across stages: 2, 4, 6
    steps = [
        max(
            int(v["step"])
            for v in torch.load(tmp_path / "c" / f"stage-{i}" / "optimizer.pt")["state"].values()
        )
        for i in (1, 2, 3)
    ]
    assert steps == [2, 4, 6]
    assert not (tmp_path / "r" / "stage-1" / "optimizer.pt").exists()
    metrics = json.loads((tmp_path / "c" / "stage-2" / "metrics.json").read_text())
    assert metrics["optimizer"] == "continuous" and metrics["lr_schedule_steps"] == [2, 4, 6]
    assert metrics["shared_prefix"] == "kv" and metrics["answer_only_head"]
    restarted = json.loads((tmp_path / "r" / "stage-2" / "metrics.json").read_text())
    assert restarted["shared_prefix"] == "mask" and restarted["lr_schedule_steps"] is None
