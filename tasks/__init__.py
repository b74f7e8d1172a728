"""Task registry: ``get_task("mbpp")``, ``get_task("nl2f")``, ``get_task("nl2bash")``."""

from __future__ import annotations

from importlib import import_module

from promptintern.tasks.base import TEMPLATE_VARIANTS, Instance, Task, TaskScore, Template

_REGISTRY = {
    "mbpp": "promptintern.tasks.mbpp:MBPPTask",
    "nl2f": "promptintern.tasks.nl2f:NL2FTask",
    "nl2bash": "promptintern.tasks.nl2bash:NL2BashTask",
}

TASK_NAMES = tuple(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
    """Instantiate a registered task by name; ``template="extended"`` selects the long template variant."""
    try:
        module_name, cls_name = _REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}") from None
    return getattr(import_module(module_name), cls_name)(**kwargs)


__all__ = ["Instance", "Task", "TaskScore", "Template", "TASK_NAMES", "TEMPLATE_VARIANTS", "get_task"]
