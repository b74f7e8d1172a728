"""Contract shared by every task: scoring needs a prediction for each instance."""

import pytest

from promptintern.tasks import PAPER_TASKS, get_task


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_score_names_missing_ids(name):
    task = get_task(name)
    instances = task.load("test")[:3]
    partial = {instances[0].id: instances[0].reference}
    with pytest.raises(ValueError, match=rf"no prediction for (id|instance).*{instances[1].id}"):
        task.score(instances, partial, progress=False)


# -- template variants ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", PAPER_TASKS)
def test_default_template_is_the_paper_variant(name):
    task = get_task(name)
    assert task.template_variant == "paper"
    assert task.template_file.name == "template.yaml"
    assert task.template_options() == {
        "variant": "paper",
        "file": "template.yaml",
        "documents": None if name == "mbpp" else "documents-paper.yaml",
    }
    template = task.template()
    assert template.instruction and template.text.startswith("You are ")
    # the paper's "+"-style rules and an output format line (Figures 5-7)
    assert template.instruction.count("\n+ ") >= 3 and "Output format:" in template.instruction
    if name == "mbpp":  # Figure 5: no API documents
        assert template.documents == ""
    else:
        assert template.documents.startswith("Here is the API documents of ")
        assert 3 <= template.documents.count("<API Doc ") <= 8


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_extended_template_variant_loads(name):
    paper, extended = get_task(name), get_task(name, template="extended")
    assert extended.template_variant == "extended" and extended.template_file.name == "template-extended.yaml"
    assert extended.template_options()["documents"] == "documents.yaml"
    long, short = extended.template().text, paper.template().text
    assert len(long) > 2.5 * len(short), (len(long), len(short))
    assert long.count("<API Doc ") >= 17
    # the answer format (which extract() reads back) is the same in both variants
    assert extended.config["answer_format"] == paper.config["answer_format"]
    ref = paper.load("train")[0].reference
    assert extended.format_answer(ref) == paper.format_answer(ref)
    assert extended.extract(extended.format_answer(ref)) == paper.extract(paper.format_answer(ref))
    # the variant changes the template only, never the data
    assert [i.query for i in extended.load("test")[:5]] == [i.query for i in paper.load("test")[:5]]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_unknown_template_variant(name):
    with pytest.raises(ValueError, match=r"unknown template variant 'short'; choose from paper, extended"):
        get_task(name, template="short")


@pytest.mark.parametrize("name", ["nl2f", "nl2bash"])
def test_paper_documents_are_catalogue_entries(name):
    """Every paper document names a function/utility of the full catalogue (the extended documents)."""
    from promptintern.tasks.documents import load_documents

    task = get_task(name)
    paper = [e["name"] for e in load_documents(task.directory / "documents-paper.yaml")]
    catalogue = {e["name"] for e in load_documents(task.directory / "documents.yaml")}
    assert paper and len(paper) == len(set(paper)) and set(paper) <= catalogue


def test_paper_documents_are_the_most_used_in_train():
    """NL2Bash: the most frequent utilities of the train split; NL2F: the functions most train formulas use."""
    import re
    from collections import Counter

    from promptintern.tasks.documents import load_documents
    from promptintern.tasks.nl2bash.split import utility_frequencies

    bash = get_task("nl2bash")
    names = [e["name"] for e in load_documents(bash.directory / "documents-paper.yaml")]
    assert names == [u for u, _ in utility_frequencies("train")[: len(names)]]
    nl2f = get_task("nl2f")
    names = [e["name"] for e in load_documents(nl2f.directory / "documents-paper.yaml")]
    used = Counter(f for i in nl2f.load("train") for f in set(re.findall(r"([A-Z]+)\(", i.reference)))
    assert names == [f for f, _ in used.most_common(len(names))]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_base_task_cannot_shrink_by_default(name):
    task = get_task(name)
    inst = task.load("test")[0]
    if name == "nl2f":
        assert task.shrink(inst) is not None
    else:
        assert task.shrink(inst) is None


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_metric_version(name):
    task = get_task(name)
    assert isinstance(task.metric_version, str) and task.metric_version
    if name == "nl2f":
        from promptintern.tasks.nl2f.metric import METRIC_VERSION

        assert task.metric_version == METRIC_VERSION != "1"
    else:
        assert task.metric_version == "1"
