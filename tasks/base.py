"""Task protocol shared by MBPP, NL2F and NL2Bash.

A task owns its data loader, its prompt template (data files under ``tasks/<name>/``), the rendering of
one instance's question and answer, the extraction of an answer from model output, and its metric.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

#: Prompt template variants of every task and the file each reads under ``tasks/<name>/``: ``paper`` is sized
#: like the paper's prompts (Figures 5-7, Tables 2-4), ``extended`` is the long API-document template.
TEMPLATE_FILES: dict[str, str] = {"paper": "template.yaml", "extended": "template-extended.yaml"}
TEMPLATE_VARIANTS: tuple[str, ...] = tuple(TEMPLATE_FILES)


def check_template_variant(template: str) -> str:
    """``template`` if it names a variant; a ``ValueError`` listing the variants otherwise."""
    if template not in TEMPLATE_FILES:
        raise ValueError(f"unknown template variant {template!r}; choose from {', '.join(TEMPLATE_VARIANTS)}")
    return template


@dataclass(frozen=True)
class Instance:
    """One example of a task: its id, split, rendered question, gold answer and task-specific fields."""

    id: str
    split: str
    query: str
    reference: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Instances sharing a group (e.g. paraphrases of one question) are one cluster for the bootstrap
    #: intervals, resampled whole; None: an independent instance.
    group: str | None = None


@dataclass(frozen=True)
class Template:
    """The recurring part of a prompt: an instruction (role, rules, output format) and API documents."""

    instruction: str
    documents: str

    @property
    def text(self) -> str:
        return "\n\n".join(part for part in (self.instruction, self.documents) if part)


@dataclass
class TaskScore:
    """A task metric: aggregate numbers, per-instance rows and an optional reproducibility signature."""

    task: str
    metrics: dict[str, float]
    per_instance: list[dict[str, Any]]
    primary: str
    signature: str | None = None
    #: The registered name of the metric that produced it.
    metric: str | None = None

    @property
    def value(self) -> float:
        return self.metrics[self.primary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "primary": self.primary,
            "metrics": self.metrics,
            "signature": self.signature,
            "metric": self.metric,
            "n": len(self.per_instance),
        }


class Task(ABC):
    """Base class of every task; what it is (name, titles, metric, k, generation length, stop strings) comes
    from the ``task.yaml`` of its folder (:class:`~promptintern.tasks.spec.TaskFile`).

    Built-in tasks subclass it for their loaders and answer extractors; a folder task
    (:class:`~promptintern.tasks.folder.FolderTask`) needs no Python.
    """

    splits: tuple[str, ...] = ("train", "validation", "test")
    #: Version of the answer extractor and of a built-in metric's normalisation; bumped whenever a score could
    #: change, so cached run keys that include it are invalidated.
    metric_version: str = "1"
    #: Prompt template variant (see :data:`TEMPLATE_FILES`); set per instance by the constructor.
    template_variant: str = "paper"

    def __init__(self, template: str = "paper"):
        self.template_variant = check_template_variant(template)

    @property
    def directory(self) -> Path:
        """The task's folder (``task.yaml``, templates, documents): a built-in's package folder."""
        return Path(sys.modules[type(self).__module__].__file__).resolve().parent

    @cached_property
    def spec(self):
        from promptintern.tasks.spec import TASK_FILE, read_task_file

        return read_task_file(self.directory / TASK_FILE)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def title(self) -> str:
        """Short name for table headers (``NL2F``)."""
        return self.spec.title or self.spec.name

    @property
    def display_name(self) -> str:
        """Name of the dataset as served (``NL2F-Spider``)."""
        return self.spec.display_name or self.title

    @property
    def shots(self) -> int:
        """k: the examples of the full prompt and of PromptIntern's first stage (the paper's value)."""
        return self.spec.shots

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end a generation (the runner and lm-eval both use them)."""
        return tuple(self.spec.stop)

    @cached_property
    def metric(self):
        """The task's :class:`~promptintern.tasks.metrics.Metric`."""
        from promptintern.tasks.metrics import get_metric

        return get_metric(self.spec.metric, self.directory)

    @property
    def primary_metric(self) -> str:
        return self.metric.primary

    def identity(self) -> dict[str, Any]:
        """What enters a run key besides the instances and the template: the declaration and the metric."""
        return {"spec": self.spec.identity, "metric": self.metric.identity(), "metric_version": self.metric_version}

    @property
    def template_file(self) -> Path:
        """The YAML file of this task's template variant."""
        path = self.directory / TEMPLATE_FILES[self.template_variant]
        if not path.is_file():
            raise ValueError(f"task {self.name!r} has no {self.template_variant!r} template ({path} not found)")
        return path

    @cached_property
    def config(self) -> dict[str, Any]:
        with open(self.template_file, encoding="utf-8") as fh:
            return yaml.safe_load(fh)

    def template_options(self) -> dict[str, Any]:
        """What identifies this task's template: the variant and the files it reads."""
        docs = self.config.get("documents") or {}
        return {
            "variant": self.template_variant,
            "file": self.template_file.name,
            "documents": docs.get("file"),
        }

    # -- data -------------------------------------------------------------------------------------
    @abstractmethod
    def load(self, split: str) -> list[Instance]:
        """All instances of ``split`` from the data root."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; choose from {', '.join(self.splits)}"
            )

    # -- prompt parts -----------------------------------------------------------------------------
    def template(self) -> Template:
        """The task's full template, read from its variant's template file and documents file."""
        from promptintern.tasks.documents import render_documents

        cfg = self.config
        docs = cfg.get("documents") or {}
        documents = ""
        if docs:
            documents = render_documents(self.directory / docs["file"], docs.get("header", ""))
        return Template(instruction=cfg["instruction"].strip(), documents=documents)

    def format_answer(self, reference: str) -> str:
        """The assistant turn for a gold answer, as the model should produce it."""
        return self.config.get("answer_format", "{answer}").format(answer=reference.strip())

    def format_example(self, index: int, instance: Instance) -> str:
        """One ``## Example i`` block holding a training instance's question and answer."""
        return f"## Example {index}\n{instance.query}\n{self.format_answer(instance.reference)}"

    def shrink(self, instance: Instance) -> Instance | None:
        """A copy of ``instance`` whose query is one step smaller (same id and reference), or None when it
        cannot shrink; for prompts that do not fit the context. The base task cannot shrink."""
        return None

    # -- evaluation -------------------------------------------------------------------------------
    def extract(self, output: str) -> str:
        """The answer contained in raw model output: the text inside the template's ``answer_format`` (e.g.
        a fenced block) when the output has its opening part, else the output without surrounding space."""
        head, _, tail = self.config.get("answer_format", "{answer}").partition("{answer}")
        text = output.strip()
        head, tail = head.strip(), tail.strip()
        if head and head in text:
            text = text.split(head, 1)[1]
            if tail and tail in text:
                text = text.split(tail, 1)[0]
        elif tail and text.endswith(tail):
            text = text[: -len(tail)]
        return text.strip()

    def predictions_for(self, instances: Sequence[Instance], predictions: Mapping[str, str]) -> list[str]:
        """The prediction of every instance, in order; raises ``ValueError`` naming ids with none."""
        missing = [i.id for i in instances if i.id not in predictions]
        if missing:
            more = " ..." if len(missing) > 10 else ""
            raise ValueError(f"{self.name}: no prediction for id(s) {', '.join(missing[:10])}{more}")
        return [predictions[i.id] or "" for i in instances]

    def score(self, instances: Sequence[Instance], predictions: Mapping[str, str], **options: Any) -> TaskScore:
        """Score predictions (already extracted) against ``instances`` with the task's metric; ids must match."""
        return self.metric.score(self, instances, predictions, **options)
