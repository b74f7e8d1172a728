"""NL2Bash: split rebuild, extraction, BLEU, template and API documents."""

from __future__ import annotations

import collections
import time

import pytest

from promptintern.paths import DataNotFoundError, data_file
from promptintern.tasks import get_task
from promptintern.tasks.documents import load_documents
from promptintern.tasks.nl2bash import extract_command, query_text
from promptintern.tasks.nl2bash import split as nl2bash_split

try:
    data_file("nl2bash", "all.nl")
    HAVE_DATA = True
except DataNotFoundError:
    HAVE_DATA = False

needs_data = pytest.mark.skipif(not HAVE_DATA, reason="NL2Bash data not available")

# The sizes this builder obtains (published: 8,090 / 609 / 606; see tasks/nl2bash/README.md).
EXPECTED_SIZES = {"train": 8088, "validation": 604, "test": 621}


@pytest.fixture(scope="module")
def task():
    return get_task("nl2bash")


@pytest.fixture(scope="module")
def built(task, tmp_path_factory):
    """Build once under a private PROMPTINTERN_HOME; record splits, frequencies and the cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROMPTINTERN_HOME", str(tmp_path_factory.mktemp("nl2bash-home")))
        splits = {name: task.load(name) for name in ("train", "validation", "test")}
        started = time.perf_counter()
        reloaded = nl2bash_split.build_split()
        return {
            "splits": splits,
            "freqs": nl2bash_split.utility_frequencies("train"),
            "cache_files": list(nl2bash_split.cache_dir("datasets").glob("nl2bash-*.json")),
            "reload_seconds": time.perf_counter() - started,
            "reloaded": reloaded,
        }


@pytest.fixture(scope="module")
def splits(built):
    return built["splits"]


# -- split -------------------------------------------------------------------------------------
@needs_data
def test_split_sizes(splits):
    assert {k: len(v) for k, v in splits.items()} == EXPECTED_SIZES
    for published, name in ((8090, "train"), (609, "validation"), (606, "test")):
        assert abs(len(splits[name]) - published) / published < 0.03  # test is +2.5 %; see README


@needs_data
def test_no_command_overlap_and_disjoint_ids(splits):
    train_commands = {i.reference for i in splits["train"]}
    for name in ("validation", "test"):
        assert not train_commands & {i.reference for i in splits[name]}
    ids = [i.id for s in splits.values() for i in s]
    assert len(ids) == len(set(ids))


@needs_data
def test_instances_shape(splits):
    nl_lines = data_file("nl2bash", "all.nl").read_text(encoding="utf-8").split("\n")
    inst = splits["test"][0]
    assert inst.query == f"[NL] {nl_lines[int(inst.id) - 1].strip()} [/NL]"
    assert inst.split == "test" and inst.meta["fold"] == nl2bash_split.TEST_FOLD
    assert inst.meta["utilities"]
    assert all(i.meta["fold"] == nl2bash_split.DEV_FOLD for i in splits["validation"])
    # group: the description template the split deals by; its pairs are one cluster for the bootstrap
    test = splits["test"]
    assert all(i.group == nl2bash_split.nl_template(i.meta["description"]) for i in test)
    sizes = collections.Counter(i.group for i in test)
    assert max(sizes.values()) >= 2 and len(sizes) < len(test)


@needs_data
def test_build_is_deterministic_and_cached(built, splits):
    fresh = nl2bash_split.build_split(use_cache=False)
    assert [p.line for p in fresh["dev"]] == [int(i.id) for i in splits["validation"]]
    assert [p.line for p in fresh["train"]] == [int(i.id) for i in splits["train"]]
    assert fresh == built["reloaded"]
    assert len(built["cache_files"]) == 1 and built["reload_seconds"] < 2.0


@needs_data
def test_utility_frequencies(built, splits):
    freqs = built["freqs"]
    assert freqs[0][0] == "find"
    assert [c for _, c in freqs] == sorted((c for _, c in freqs), reverse=True)
    assert dict(freqs)["find"] == sum("find" in i.meta["utilities"] for i in splits["train"])


def test_command_utilities_rules():
    cu = nl2bash_split.command_utilities
    assert cu("find . -name '*.txt' | xargs -0 rm -f") == ("find", "xargs", "rm")
    assert cu("find . -type f -exec chmod 644 {} \\;") == ("find", "chmod")
    assert cu("sudo egrep -r foo /etc") == ("grep",)
    assert cu("x=$(dirname $0)") == ("dirname",)
    assert cu("bash -c 'ls -l'") == ("bash", "ls")
    assert cu("nl -ba file \\") == ("nl",)  # lone trailing backslash is a literal word
    assert cu("cd /tmp && ls") is None  # sequences are unsupported
    assert cu("echo hi > out.txt") is None  # so are redirections
    assert cu("for f in *; do echo $f; done") is None
    assert cu("perlish -x") is None  # no grammar for the utility
    assert cu("rsync -av -e ssh a b") is None  # command arguments must be quoted
    assert cu("rsync -av -e 'ssh -p 22' a b") == ("rsync", "ssh")


def test_command_utilities_flag_lint():
    cu = nl2bash_split.command_utilities
    assert cu("tar --create -f a.tar d") is None  # unknown long option
    assert cu("rsync --chmod=u+x a b") is None  # value for an option without argument
    assert cu("grep --color=auto -rn foo .") == ("grep",)
    assert cu("ls -lZq") == ("ls",) and cu("ls -lj") is None  # every bundled letter must be an option
    assert cu("cd a b") is None  # more words than positional slots
    assert cu("tail -n") is None  # option left without its argument
    assert cu("head -5 f") == ("head",)  # "- K" form
    assert cu("tar xzf a.tgz") == ("tar",)  # first tar word is read as options
    assert cu("xargs -i{} mv {} d") == ("xargs", "mv")
    assert cu("uname -a > out.txt") == ("uname",)  # a redirection no slot takes is ignored
    assert cu("x=$HOME") is None  # only command substitutions inside assignments
    assert cu("$EDITOR file") == ()  # parses, uses no utility
    assert cu("ps aux | grep foo") == ("ps", "grep")
    assert nl2bash_split.normalize_surface("$ tar cf a.tar d") == "tar -cf a.tar d"


def test_nl_template_and_stemmer():
    t = nl2bash_split.nl_template
    assert t("Find all files under the current directory.") == "find all file under current directori"
    assert t('To count "*.txt" files (recursively)') == 'count "*.txt" file'
    assert t("List five biggest files") == "list 5 biggest file"
    stem = nl2bash_split.stem
    assert [stem(w) for w in ("directories", "running", "generously", "dying", "skies")] == [
        "directori", "run", "generous", "die", "sky"]


def test_malformed_data_names_file_and_line(tmp_path):
    bad = tmp_path / "random_tokens.txt"
    bad.write_text("1\n2\nx\n", encoding="utf-8")
    with pytest.raises(nl2bash_split.MalformedDataError, match=r"random_tokens.txt:3"):
        nl2bash_split._read_tokens(bad)
    with pytest.raises(nl2bash_split.MalformedDataError, match="has 2 lines"):
        nl2bash_split.build_pairs(["a", "b"], ["ls"], [0], (tmp_path / "all.nl", tmp_path / "all.cm"))


def test_unknown_split(task):
    with pytest.raises(ValueError, match="no split"):
        task.load("dev-ish")


# -- extraction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("```bash\nfind . -name '*.py'\n```", "find . -name '*.py'"),
        ("Here is the command:\n```\n$ ls -la\n```\nIt lists files.", "ls -la"),
        ("[BASH] grep -r foo . [/BASH]", "grep -r foo ."),
        ("Sure! Here is the command:\n\ndu -sh *\n\nThis shows sizes.", "du -sh *"),
        ("You can use `wc -l file.txt` for that.", "wc -l file.txt"),
        ("```sh\n# count lines\nwc -l a b\n```", "wc -l a b"),
        ("  cat a.txt | sort | uniq -c  ", "cat a.txt | sort | uniq -c"),
        ("[NL] list files [/NL]\n```bash\nls\n```", "ls"),
        ("", ""),
    ],
)
def test_extract(output, expected):
    assert extract_command(output) == expected


# -- scoring -----------------------------------------------------------------------------------
def _instances():
    from promptintern.tasks.base import Instance

    refs = ["find . -name '*.txt' -delete", "ls -la /tmp", "grep -rn foo src | wc -l"]
    return [Instance(str(i), "test", query_text(f"q{i}"), r) for i, r in enumerate(refs, 1)]


def test_oracle_bleu_is_100(task):
    inst = _instances()
    score = task.score(inst, {i.id: i.reference for i in inst})
    assert score.metrics["bleu"] == pytest.approx(100.0)
    assert score.metrics["sentence_bleu_mean"] == pytest.approx(100.0)
    assert score.metrics["n"] == 3 and score.value == score.metrics["bleu"]
    assert "tok:13a" in score.signature
    assert set(score.per_instance[0]) == {"id", "prediction", "reference", "sentence_bleu"}


def test_wrong_prediction_scores_lower(task):
    inst = _instances()
    preds = {i.id: i.reference for i in inst} | {"2": "ls -l"}
    score = task.score(inst, preds)
    assert score.metrics["bleu"] < 100.0
    assert score.per_instance[1]["sentence_bleu"] < 100.0


def test_missing_prediction_is_an_error(task):
    inst = _instances()
    with pytest.raises(ValueError, match="3"):
        task.score(inst, {"1": "x", "2": "y"})


# -- template and documents --------------------------------------------------------------------
def test_template_renders(task):
    tpl = task.template()
    assert "expert in bash" in tpl.instruction
    assert tpl.documents.startswith("Here is the API documents of bash utilities that may help you:")
    assert "<API Doc 1> find" in tpl.documents
    assert task.format_answer("ls -l") == "```bash\nls -l\n```"
    assert task.extract(task.format_answer("ls -l")) == "ls -l"


@needs_data
def test_documents_cover_top40_train_utilities(built, task):
    names = {e["name"] for e in load_documents(task.directory / "documents.yaml")}
    assert len(names) >= 40
    top40 = [u for u, _ in built["freqs"][:40]]
    assert not set(top40) - names
