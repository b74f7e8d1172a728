"""The ``distill`` method: context distillation from ``ft-full`` (Snell et al. 2022), a query-only LoRA
student trained to match the next-token distributions of the model fine-tuned on the full prompt
(:mod:`promptintern.training.distill`: top-K targets, their cache, the loss).

Teacher: the ``ft-full`` experiment of the same task, profile and model, trained first if it is not yet (its
adapter and its stages are reused when they are); its run key enters this method's run key, so a changed
teacher retrains the student. Settings: the profile's ``baselines.distill`` (``top_k``, ``temperature``,
``ce_weight``). Student: the profile's LoRA and trainer settings and its stages with a constant query-only
schedule, i.e. ft-none's prompts, optimizer steps and LR schedule, so the two rows differ in the loss only.
Served like ft-none: the query-only prompt, LoRA merged, on every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptintern.methods.registry import Fixed, register_method

if TYPE_CHECKING:
    from promptintern.harness.experiment import Experiment

#: The method whose fine-tuned model is the teacher (template + k shots, constant schedule).
TEACHER = "ft-full"
DESCRIPTION = "context distillation from ft-full (Snell et al. 2022)"


class Distill(Fixed):
    """Query-only student (τ = 0, no shots, the profile's stages) distilled from the ``ft-full`` teacher."""

    def __init__(self, name: str = "distill", description: str = DESCRIPTION):
        super().__init__(name, 0.0, 0.0, description=description)

    def teacher(self, exp: Experiment) -> Experiment:
        """The teacher's experiment: ``ft-full`` on ``exp``'s task, profile and model."""
        from promptintern.harness.experiment import Experiment

        return Experiment(exp.task_name, TEACHER, exp.profile, exp.model)

    def key_settings(self, exp: Experiment) -> dict[str, Any]:
        teacher = {"method": TEACHER, "train_key": self.teacher(exp).train_key}
        return {"distill": exp.profile.baselines.distill.model_dump(), "teacher": teacher}

    def train(self, exp: Experiment, datasets, config, progress: bool) -> Path:
        from promptintern.training.distill import train_distill

        teacher = self.teacher(exp)
        adapter = teacher.train(progress)
        spec = exp.profile.baselines.distill
        return train_distill(
            datasets,
            teacher.stage_datasets()[-1],  # the prompts ft-full is served with (its stages are all alike)
            adapter,
            config,
            teacher_key=teacher.train_key,
            top_k=spec.top_k,
            temperature=spec.temperature,
            ce_weight=spec.ce_weight,
            progress=progress,
        )


DISTILL = register_method(Distill())
