"""Evaluation stage: predictions files (:mod:`.predictions`), scoring with a task's metric (:mod:`.scoring`),
bootstrap intervals (:mod:`.stats`), prices and cost (:mod:`.cost`) and a run set against a reference
(:mod:`.compare`). The metrics themselves are registered with the tasks (:mod:`promptintern.tasks.metrics`)."""
