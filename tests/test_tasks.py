"""Contract shared by every task: scoring needs a prediction for each instance."""

import pytest

from promptintern.tasks import TASK_NAMES, get_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_score_names_missing_ids(name):
    task = get_task(name)
    instances = task.load("test")[:3]
    partial = {instances[0].id: instances[0].reference}
    with pytest.raises(ValueError, match=rf"no prediction for (id|instance).*{instances[1].id}"):
        task.score(instances, partial, progress=False)
