"""Stage datasets: Algorithm 1's prompts for every training instance at every stage.

Stage s uses the template compressed to τ_s (``S_tmp``; τ=1 full, τ=0 dropped) and the top-k_s examples by
sentence BLEU (``S_egs``; Eq. 3: between gold outputs for training instances, ``retrieval_key``). Templates
are compressed once per stage (they are shared by all instances) and cached; examples are retrieved once at
the largest k and sliced per stage.

Every prompt, for training and for inference, is built by :func:`fit_prompt`: the template is never cut.
When a prompt does not fit the model's context (``max_length`` minus the answer, or minus the generation
budget at inference), the lowest-ranked examples are dropped first, then the query is shrunk step by step
(``Task.shrink``: NL2F drops table rows); every drop is counted in :class:`FitStats`, and a prompt whose
template + query still does not fit raises :class:`PromptTooLongError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from promptintern.methods.schedule import Schedule, example_counts
from promptintern.prompting.prompt import Prompt, build_prompt
from promptintern.prompting.retrieve import ExampleRetriever
from promptintern.tasks import Instance, Task, Template


@dataclass(frozen=True)
class TrainExample:
    """One training instance at one stage: the stage's prompt and the assistant answer."""

    id: str
    prompt: Prompt
    answer: str

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
    instances: Sequence[Instance],
    bank: Sequence[Instance],
    k: int,
    *,
    fraction: float = 1.0,
    seed: int = 0,
    field: str = "query",
) -> dict[str, list[Instance]]:
    """The top-``k`` BLEU-retrieved bank examples of every instance (never itself), cached on disk.

    ``field``: ``answer`` scores gold outputs (Eq. 3, training instances), ``query`` the queries (test time).
    """
    if k <= 0:
        return {inst.id: [] for inst in instances}
    retriever = ExampleRetriever(bank, fraction=fraction, seed=seed, field=field)
    by_id = {b.id: b for b in bank}
    ids = retriever.retrieve_all(instances, k)
    return {iid: [by_id[b] for b in chosen] for iid, chosen in ids.items()}


class PromptTooLongError(ValueError):
    """Template + query (+ the answer or generation budget) do not fit the model's context."""


@dataclass
class FitStats:
    """What :func:`fit_prompt` dropped to make prompts fit (summed over the prompts it built)."""

    prompts: int = 0
    prompts_fitted: int = 0  # prompts that lost anything
    shots_dropped: int = 0
    query_steps: int = 0  # Task.shrink steps (NL2F: table rows dropped)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ContextBudget:
    """A prompt fits when ``count(prompt) + reserve <= max_tokens``.

    ``count`` gives the tokens of the rendered prompt as the model sees it; ``reserve(instance)`` the tokens
    that must follow it: the gold answer and end-of-turn token when training, the generation budget at
    inference (plus any tokens a method inserts, e.g. gist tokens).
    """

    count: Callable[[Prompt], int]
    max_tokens: int
    reserve: Callable[[Instance], int]


def fit_prompt(
    task: Task,
    instance: Instance,
    template: Template | None,
    examples: Sequence[Instance],
    budget: ContextBudget | None = None,
    stats: FitStats | None = None,
) -> Prompt:
    """``instance``'s prompt with ``template`` and ``examples`` (best first) that fits ``budget``.

    Drops the lowest-ranked example until the prompt fits, then shrinks the query (``Task.shrink``); the
    template is never touched. Raises :class:`PromptTooLongError` if template + query + reserve cannot fit.
    """
    shots, inst, dropped, steps = list(examples), instance, 0, 0
    prompt = build_prompt(task, inst, template, shots)
    if budget is not None:
        reserve = budget.reserve(instance)
        while (size := budget.count(prompt)) + reserve > budget.max_tokens:
            if shots:
                shots.pop()
                dropped += 1
            elif (smaller := task.shrink(inst)) is not None:
                inst, steps = smaller, steps + 1
            else:
                what = "template + query" if template is not None else "query"
                raise PromptTooLongError(
                    f"{task.name} instance {instance.id}: {what} take {size} tokens and {reserve} must follow "
                    f"(answer or generation budget), more than the context of {budget.max_tokens} tokens; "
                    "raise train.max_length or use a shorter template"
                )
            prompt = build_prompt(task, inst, template, shots)
    if stats is not None:
        stats.prompts += 1
        stats.prompts_fitted += bool(dropped or steps)
        stats.shots_dropped += dropped
        stats.query_steps += steps
    return prompt


def stage_prompt(
    task: Task,
    instance: Instance,
    plan: StagePlan,
    examples: Sequence[Instance],
    templates: Mapping[str, Template | None] | None = None,
    budget: ContextBudget | None = None,
    stats: FitStats | None = None,
) -> Prompt:
    """``instance``'s prompt at ``plan``, fitted to ``budget``; ``templates`` (by instance id) overrides the
    plan's template (question-aware compression gives every instance its own)."""
    template = templates[instance.id] if templates is not None else plan.template
    return fit_prompt(task, instance, template, list(examples)[: plan.shots], budget, stats)


def build_stage_datasets(
    task: Task,
    train: Sequence[Instance],
    plans: Sequence[StagePlan],
    *,
    bank: Sequence[Instance] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    field: str = "answer",
    templates: Mapping[str, Template | None] | None = None,
    budget: ContextBudget | None = None,
    stats: Sequence[FitStats] | None = None,
) -> list[list[TrainExample]]:
    """Training examples per stage: the stage's prompt for each instance and its gold answer.

    ``templates`` (by instance id) replaces every stage's template, for question-aware compression;
    ``field`` is what retrieval scores (``answer``: Eq. 3); ``stats`` (one per plan) count what fitting
    to ``budget`` dropped.
    """
    bank = train if bank is None else bank
    shots = example_map(train, bank, max(p.shots for p in plans), fraction=fraction, seed=seed, field=field)
    stats = stats if stats is not None else [None] * len(plans)
    return [
        [
            TrainExample(
                inst.id,
                stage_prompt(task, inst, plan, shots[inst.id], templates, budget, stage_stats),
                task.format_answer(inst.reference),
            )
            for inst in train
        ]
        for plan, stage_stats in zip(plans, stats, strict=True)
    ]
