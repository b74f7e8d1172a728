"""Stage datasets: Algorithm 1's prompts for every training instance at every stage.

Stage s uses the template compressed to τ_s (``S_tmp``; τ=1 full, τ=0 dropped) and the top-k_s examples by
sentence BLEU between queries (``S_egs``). Templates are compressed once per stage (they are shared by all
instances) and cached; examples are retrieved once at the largest k and sliced per stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from promptintern.prompt import Prompt, build_prompt
from promptintern.retrieve import ExampleRetriever
from promptintern.schedule import Schedule, example_counts
from promptintern.tasks import Instance, Task, Template
from promptintern.train import TrainExample


@dataclass(frozen=True)
class StagePlan:
    """τ, k and the (compressed or absent) template of one stage."""

    index: int
    tau: float
    shots: int
    template: Template | None
    template_rate_achieved: float | None = None


def plan_stage(task: Task, index: int, tau: float, shots: int, compressor=None) -> StagePlan:
    """Stage ``index``: the full template (τ≥1), none (τ≤0) or one compressed by ``compressor``."""
    if tau >= 1.0:
        return StagePlan(index, tau, shots, task.template(), 1.0)
    if tau <= 0.0:
        return StagePlan(index, tau, shots, None, 0.0)
    if compressor is None:
        raise ValueError(f"stage {index} needs a compressor for τ={tau:g}")
    result = compressor.compress_with_stats(task.template(), tau)
    return StagePlan(index, tau, shots, result.template, result.rate_achieved)


def plan_stages(
    task: Task,
    template_schedule: Schedule,
    example_schedule: Schedule,
    compressor=None,
    *,
    last_only: bool = False,
) -> list[StagePlan]:
    """Every stage's plan (or just the last, for inference); ``compressor`` is a ``TemplateCompressor``."""
    if template_schedule.stages != example_schedule.stages:
        raise ValueError("template and example schedules must have the same number of stages")
    rows = list(enumerate(zip(template_schedule.values(), example_counts(example_schedule), strict=True), 1))
    if last_only:
        rows = rows[-1:]
    return [plan_stage(task, index, tau, k, compressor) for index, (tau, k) in rows]


def example_map(
    instances: Sequence[Instance], bank: Sequence[Instance], k: int, *, fraction: float = 1.0, seed: int = 0
) -> dict[str, list[Instance]]:
    """The top-``k`` BLEU-retrieved bank examples of every instance (never itself), cached on disk."""
    if k <= 0:
        return {inst.id: [] for inst in instances}
    retriever = ExampleRetriever(bank, fraction=fraction, seed=seed)
    by_id = {b.id: b for b in bank}
    ids = retriever.retrieve_all(instances, k)
    return {iid: [by_id[b] for b in chosen] for iid, chosen in ids.items()}


def stage_prompt(
    task: Task,
    instance: Instance,
    plan: StagePlan,
    examples: Sequence[Instance],
    templates: Mapping[str, Template | None] | None = None,
) -> Prompt:
    """``instance``'s prompt at ``plan``; ``templates`` (by instance id) overrides the plan's template
    (question-aware compression gives every instance its own)."""
    template = templates[instance.id] if templates is not None else plan.template
    return build_prompt(task, instance, template, list(examples)[: plan.shots])


def build_stage_datasets(
    task: Task,
    train: Sequence[Instance],
    plans: Sequence[StagePlan],
    *,
    bank: Sequence[Instance] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    templates: Mapping[str, Template | None] | None = None,
) -> list[list[TrainExample]]:
    """Training examples per stage: the stage's prompt for each instance and its gold answer.

    ``templates`` (by instance id) replaces every stage's template, for question-aware compression.
    """
    bank = train if bank is None else bank
    shots = example_map(train, bank, max(p.shots for p in plans), fraction=fraction, seed=seed)
    return [
        [
            TrainExample(
                inst.id,
                stage_prompt(task, inst, plan, shots[inst.id], templates),
                task.format_answer(inst.reference),
            )
            for inst in train
        ]
        for plan in plans
    ]
