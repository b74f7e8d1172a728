"""Context distillation (``distill``): the loss against a hand computation, its zero and zero gradient at the
teacher, teacher targets batched vs one at a time, the student's forward on a padded batch, the profile
settings, the teacher's key in the student's key, and an end-to-end run on the tiny model that trains the
teacher, caches its targets, trains the student and reuses all three when run again."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import promptintern.training.distill as distill  # noqa: E402
from promptintern import keys  # noqa: E402
from promptintern.harness.experiment import Experiment  # noqa: E402
from promptintern.methods.registry import get_method  # noqa: E402
from promptintern.paths import cache_dir  # noqa: E402
from promptintern.profile import ProfileError, deep_merge, load_profile, validate_profile  # noqa: E402
from promptintern.testing import write_task_folder  # noqa: E402
from promptintern.training.collate import IGNORE_INDEX  # noqa: E402
from promptintern.training.distill import (  # noqa: E402
    DistillCollator,
    distill_loss,
    teacher_kl,
    teacher_targets,
    topk_targets,
    use_distill_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the loss


def _softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def test_loss_against_a_hand_computation():
    teacher = [[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]]
    student = [[0.5, 1.5, -0.5, 0.0], [1.0, 0.0, 2.0, -1.0]]
    gold = [1, 3]
    for temperature in (1.0, 2.0):
        ids, logprobs, rest = topk_targets(torch.tensor(teacher), 2, temperature)
        kl_sum = ce_sum = 0.0
        for t, s, g, top in zip(teacher, student, gold, ([0, 1], [1, 2]), strict=True):
            q = _softmax([x / temperature for x in t])
            p = _softmax([x / temperature for x in s])
            # the top-2 tokens and the rest of the vocabulary
            qb = [q[top[0]], q[top[1]], 1.0 - q[top[0]] - q[top[1]]]
            pb = [p[top[0]], p[top[1]], 1.0 - p[top[0]] - p[top[1]]]
            kl_sum += sum(a * math.log(a / b) for a, b in zip(qb, pb, strict=True))
            ce_sum += -math.log(_softmax(s)[g])  # the cross-entropy reads the raw logits
        assert ids.tolist() == [[0, 1], [1, 2]]
        q0 = _softmax([x / temperature for x in teacher[0]])
        assert logprobs[0].tolist() == pytest.approx([math.log(q0[0]), math.log(q0[1])], abs=1e-6)
        assert rest[0].item() == pytest.approx(math.log(q0[2] + q0[3]), abs=1e-6)

        got = distill_loss(torch.tensor(student), torch.tensor(gold), ids, logprobs, rest,
                           temperature=temperature, ce_weight=0.3)  # fmt: skip
        assert got.item() == pytest.approx((temperature**2 * kl_sum + 0.3 * ce_sum) / 2, rel=1e-5)
        per_step = distill_loss(torch.tensor(student), torch.tensor(gold), ids, logprobs, rest,
                                temperature=temperature, ce_weight=0.3, count=torch.tensor(8))  # fmt: skip
        assert per_step.item() == pytest.approx(got.item() * 2 / 8, rel=1e-5)


def test_kl_is_zero_with_zero_gradient_at_the_teacher_and_positive_elsewhere():
    torch.manual_seed(0)
    logits = torch.randn(6, 20) * 3
    ids, logprobs, rest = topk_targets(logits, 5, temperature=2.0)
    same = logits.clone().requires_grad_()
    kl = teacher_kl(same, ids, logprobs, rest, temperature=2.0)
    assert kl.abs().max() < 1e-5
    kl.sum().backward()
    assert same.grad.abs().max() < 1e-6
    shifted = teacher_kl(logits + 4.0, ids, logprobs, rest, temperature=2.0)  # the same distributions
    assert shifted.abs().max() < 1e-5

    other = (logits + torch.randn(6, 20)).requires_grad_()
    kl = teacher_kl(other, ids, logprobs, rest, temperature=2.0)
    assert (kl > 1e-3).all()
    kl.sum().backward()
    assert other.grad.abs().max() > 1e-3
    # the tail bucket counts: the top-5 tokens in the teacher's ratios but more mass outside them
    tail = logits.clone()
    tail[torch.ones_like(tail, dtype=torch.bool).scatter(-1, ids, False)] += 3.0
    assert (teacher_kl(tail, ids, logprobs, rest, temperature=2.0) > 1e-2).all()
    # with ce_weight 0 the whole loss is the KL: zero at the teacher
    gold = ids[:, 0]
    assert distill_loss(logits, gold, ids, logprobs, rest, temperature=2.0, ce_weight=0.0).abs() < 1e-5
    with pytest.raises(ValueError, match="no tail"):
        teacher_kl(logits, torch.arange(20).expand(6, 20), logprobs, rest)
    assert topk_targets(logits, 99)[0].shape == (6, 19)  # K is capped at V - 1


# ---------------------------------------------------------------- targets and the student's forward


def _llama(seed: int, vocab: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config).eval()


SEQUENCES = [([5, 6, 7, 8, 9, 10, 11], 3), ([12, 13, 14, 15], 2), ([20, 21, 22, 23, 24], 1)]


def _answer_positions(model, ids: list[int], answer: int):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, len(ids) - answer - 1 : len(ids) - 1]


def test_teacher_targets_batched_and_the_student_forward_on_a_padded_batch():
    teacher, student = _llama(1), _llama(2)
    targets = teacher_targets(teacher, SEQUENCES, top_k=5, temperature=2.0, batch_size=2, pad_token_id=0)
    for (ids, answer), got in zip(SEQUENCES, targets, strict=True):
        want = topk_targets(_answer_positions(teacher, ids, answer), 5, 2.0)
        assert len(got) == answer and torch.equal(got.ids, want[0])
        torch.testing.assert_close(got.logprobs, want[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.rest, want[2], atol=1e-5, rtol=1e-5)

    expected, count = torch.tensor(0.0), 0
    for (ids, answer), t in zip(SEQUENCES, targets, strict=True):
        logits = _answer_positions(student, ids, answer)
        gold = torch.tensor(ids[-answer:])
        loss = distill_loss(logits, gold, t.ids, t.logprobs, t.rest, temperature=2.0, ce_weight=0.3)
        expected, count = expected + loss * answer, count + answer
    collator = DistillCollator(0, {tuple(ids): t for (ids, _), t in zip(SEQUENCES, targets, strict=True)})
    features = [
        {"input_ids": ids, "labels": [IGNORE_INDEX] * (len(ids) - n) + ids[-n:]} for ids, n in SEQUENCES
    ]
    batch = collator(features)
    assert batch["teacher_ids"].shape == (3, 3, 5) and batch["teacher_mask"].sum(1).tolist() == [3, 2, 1]
    use_distill_loss(student, temperature=2.0, ce_weight=0.3)
    torch.testing.assert_close(student(**batch)["loss"], expected / count, atol=1e-5, rtol=1e-5)
    step = student(**batch, num_items_in_batch=torch.tensor(12))["loss"]  # answer tokens of the whole step
    torch.testing.assert_close(step, expected / 12, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="no teacher targets"):
        collator([{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}])


# ---------------------------------------------------------------- the method


@pytest.fixture()
def folder_task(tmp_path):
    return str(write_task_folder(tmp_path))


def test_profile_settings_defaults_and_errors():
    smoke = load_profile("smoke")
    assert smoke.baselines.distill.model_dump() == {"top_k": 16, "temperature": 1.0, "ce_weight": 0.5}
    assert get_method("distill").description == "context distillation from ft-full (Snell et al. 2022)"
    bad = deep_merge(smoke.model_dump(), {"baselines": {"distill": {"top_k": 0, "temperatur": 2.0}}})
    with pytest.raises(ProfileError) as err:
        validate_profile(bad, "test")
    assert "baselines.distill.top_k" in str(err.value) and "baselines.distill.temperatur" in str(err.value)


def test_the_teachers_key_enters_the_students_key(folder_task, tiny_model_dir, monkeypatch):
    smoke = load_profile("smoke")

    def run(method, profile=smoke):
        return Experiment(folder_task, method, profile, model=str(tiny_model_dir))

    student, teacher = run("distill"), run("ft-full")
    assert student.training_settings()["teacher"] == {"method": "ft-full", "train_key": teacher.train_key}
    assert student.settings()["distill"] == smoke.baselines.distill.model_dump()
    own_settings = {k: v for k, v in student.training_settings().items() if k != "teacher"}
    student_key = student.train_key
    monkeypatch.setitem(keys.METHOD_VERSIONS, "ft-full", keys.method_version("ft-full") + 1)
    changed, new_teacher = run("distill"), run("ft-full")
    assert new_teacher.train_key != teacher.train_key
    assert changed.train_key != student_key and changed.train_key not in str(student.train_directory)
    # only through the teacher's key: the student's own settings are unchanged
    assert {k: v for k, v in changed.training_settings().items() if k != "teacher"} == own_settings
    lighter = validate_profile(
        deep_merge(smoke.model_dump(), {"baselines": {"distill": {"ce_weight": 0.1}}}), "t"
    )
    assert run("distill", lighter).train_key != changed.train_key
    assert run("ft-full", lighter).train_key == new_teacher.train_key


def _stamps(*folders):
    """mtime of every stage's DONE marker and adapter weights under the run folders (through the symlinks)."""
    paths = [p for f in folders for p in (*f.glob("stage-*/DONE"), *f.glob("stage-*/adapter/*.safetensors"))]
    return {str(p): p.stat().st_mtime_ns for p in paths}


def _boom(*args, **kwargs):
    raise AssertionError("recomputed although everything is cached")


def test_end_to_end_teacher_targets_student_then_everything_reused(folder_task, tiny_model_dir, monkeypatch):
    from promptintern.training.stage_trainer import StageTrainer

    smoke = load_profile("smoke")
    exp = Experiment(folder_task, "distill", smoke, model=str(tiny_model_dir))
    teacher = Experiment(exp.task_name, "ft-full", smoke, model=str(tiny_model_dir))
    assert [(p.tau, p.shots) for p in exp.plans] == [(0.0, 0)] * smoke.method.stages
    adapter = exp.train(progress=False)
    assert adapter == exp.train_directory / "adapter" and (adapter / "adapter_config.json").is_file()
    assert (teacher.train_directory / "adapter" / "adapter_config.json").is_file()  # the teacher was trained
    cached = list(cache_dir("distill").glob("*.pt"))
    assert len(cached) == 1
    recorded = json.loads((exp.train_directory / "config.json").read_text())["method"]
    assert recorded == {"method": "distill", "teacher": teacher.train_key, "targets": cached[0].stem,
                        "top_k": 16, "temperature": 1.0, "ce_weight": 0.5}  # fmt: skip
    stored = torch.load(cached[0], weights_only=True)
    assert stored["instances"] == [i.id for i in exp.train_set] and stored["ids"].shape[1] == 16
    assert len(stored["lengths"]) == 4 and stored["ids"].shape[0] == sum(stored["lengths"])
    metrics = json.loads((exp.train_directory / "stage-3" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    none = Experiment(exp.task_name, "ft-none", smoke, model=str(tiny_model_dir))
    assert none.stage_datasets() == exp.stage_datasets()  # ft-none's prompts, another loss
    stamps = _stamps(exp.train_directory, teacher.train_directory)
    assert len(stamps) == 12

    monkeypatch.setattr(distill, "teacher_targets", _boom)
    monkeypatch.setattr(StageTrainer, "train", _boom)
    assert exp.train(progress=False) == adapter  # nothing trained, the teacher not run again
    assert _stamps(exp.train_directory, teacher.train_directory) == stamps
    assert [p.stat().st_mtime_ns for p in cache_dir("distill").glob("*.pt")] == [cached[0].stat().st_mtime_ns]

    result = exp.evaluate(progress=False)  # served query-only, the merged student
    assert result["method"] == "distill" and result["n"] == 3 and result["template"]["rate_requested"] == 0.0
    assert all(p.template == "" and not p.examples for p in exp.inference_prompts())
