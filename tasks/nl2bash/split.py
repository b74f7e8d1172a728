"""Rebuild the published NL2Bash train/dev/test split (Lin et al., 2018) from ``all.nl``/``all.cm``.

The original procedure (TellinaTool/nl2bash, ``data/scripts/filter_data.py`` + ``split_data.py``):

1. keep a pair iff its description has at most 50 words, its command parses, and every utility it
   uses is among the 100 most frequent ones (after dropping a black list of editors/languages and a
   grey list of shell built-ins);
2. group pairs by a normalised description ("NL template"), sort the templates and give template
   ``i`` the fold ``random_tokens[i]`` (0-9 train, 10 dev, 11 test);
3. move every dev/test pair whose command also occurs in the *original* train folds into train.

This module re-implements the three steps with our own code.  Step 2 and 3 are exact.  Step 1 follows
the original's "parses": its surface clean-up (:func:`normalize_surface`), then a single bashlex tree
linted against a synopsis grammar of ~130 utilities -- structure, utility inventory, options (unknown
long options, bundles with unknown letters, values for argument-less options, missing arguments) and
positional slots -- re-implemented in :mod:`.flags` with our own tables (``flags.yaml``).  The
template follows the original ``basic_tokenizer`` with our own Porter2 stemmer (:mod:`.stem`) but
without its spelling corrector, whose word list is not published.

Obtained: 9,350 pairs in 8,448 templates pass (original: 9,305 / 8,412); the 36 templates sorted past
the last fold token are dropped, leaving 8,088 / 604 / 621 pairs (published 8,090 / 609 / 606; test is
+2.5 %).  Because folds are dealt by *position* in the sorted template list, every template we add or
miss before position ``i`` changes the fold of template ``i``: sizes are a draw from the same process,
and membership differs from the published files.  See ``README.md``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from promptintern.io import atomic_write_text
from promptintern.paths import cache_dir, data_file
from promptintern.tasks.nl2bash.flags import FLAGS_FILE, lint_utilities
from promptintern.tasks.nl2bash.stem import stem

BUILDER_VERSION = "nl2bash-split-v2"
SOURCE_FILES = ("all.nl", "all.cm", "random_tokens.txt")
SPLIT_NAMES = {"train": "train", "validation": "dev", "test": "test"}

MAX_NL_WORDS = 50
NUM_UTILITIES = 100
NUM_FOLDS = 12
DEV_FOLD, TEST_FOLD = NUM_FOLDS - 2, NUM_FOLDS - 1

#: Never counted among the top utilities: editors, interpreters, package managers (black list) and
#: shell built-ins that only change the session (grey list).
EXCLUDED_UTILITIES = frozenset(
    """
    cpp g++ java perl python ruby nano emacs vim awk sed less more screen brew yum apt-get tmux
    alias unalias set unset source export shift true false pushd popd
    """.split()
)

class MalformedDataError(ValueError):
    """A source file does not have the expected shape; the message names file and line."""


@dataclass(frozen=True)
class Pair:
    """One kept pair: 1-based line in ``all.nl``, texts, utilities, dealt fold and final split."""

    line: int
    nl: str
    cm: str
    utilities: tuple[str, ...]
    fold: int
    split: str  # "train", "dev" or "test"; dev/test pairs whose command is in train end up in train


# ---------------------------------------------------------------------------------------------
# Commands: "does it parse" and "which utilities does it use"
# ---------------------------------------------------------------------------------------------
_SURFACE_FIXES = (
    ("sudo", ""),
    ("/usr/bin/find", "find"), ("/bin/find", "find"), ("/usr/bin/grep", "grep"),
    ("/bin/rm", "rm"), ("/bin/mv", "mv"),
    ("'{}'", "{}"), ('"{}"', "{}"), ("-i{}", "-I {}"), ("-i%", "-I %"), ("-I{}", "-I {}"), (" [] ", " {} "),
    ("-L.", "-L"), ("-mitime", "-mtime"), ("-dev", "-xdev"), ("-regex-type", "-regextype"),
    (" ( ", " \\( "), (" ) ", " \\) "), ("-\\(", "\\("), ("-\\)", "\\)"), ('"\\)', " \\)"),
    ("\\(-", "\\( -"), ("e\\)", "e \\)"), ("-\\!", "!"),
    ("— ", "-"), ("–", "-"), ("—", "-"), ("“", '"'), ("”", '"'), ("-\u043e", "-o"), ("‘", "'"), ("’", "'"),
)
_LATE_FIXES = (
    ("/bin/echo", "echo"), (" exec sed ", " -exec sed "), (" xargs -iname ", " xargs "),
    (" -chour +1 ", " -cmin 60 "), (" -target-directory ", " --target-directory="),
    ("- perm", "-perm"), (" perm", " -perm"), ("'-rd\\n' ", ""),
)


def normalize_surface(cmd: str) -> str:
    """The original's pre-parse clean-up: drop ``sudo``, full utility paths, prompts and common typos,
    and make the first word after ``tar`` an option bundle (``tar xzf`` -> ``tar -xzf``)."""
    cmd = cmd.replace("\n", " ").strip()
    for old, new in _SURFACE_FIXES:
        cmd = cmd.replace(old, new)
    cmd = re.sub("-prin($| )", "-print", cmd)  # sic: the original also eats the following space
    for old, new in _LATE_FIXES:
        cmd = cmd.replace(old, new)
    for prompt in ("$ ", "# "):
        if cmd.startswith(prompt):
            cmd = cmd[len(prompt):]
    if cmd.startswith(("$find ", "#find ")):
        cmd = cmd[1:]
    if cmd.startswith("tar"):
        cmd = " " + cmd
    cmd = re.sub(r" tar (?=\w)", " tar -", cmd)
    cmd = cmd.strip()
    # a lone trailing backslash was a literal word for the original parser; bashlex 0.18 rejects it
    if cmd.endswith("\\") and not cmd.endswith("\\\\"):
        cmd = cmd[:-1] + "'\\'"
    return cmd.strip()


def command_utilities(cmd: str) -> tuple[str, ...] | None:
    """Utilities used by ``cmd`` in order of appearance (possibly none), or ``None`` when it does not
    parse under the original rules (see :mod:`.flags`: structure, utility grammar, option/argument lint).
    """
    text = normalize_surface(cmd)
    if not text:
        return None
    return lint_utilities(text)


# ---------------------------------------------------------------------------------------------
# Descriptions: the normalised NL template that groups pairs
# ---------------------------------------------------------------------------------------------
_PERMISSION_RE = r"(([u|g|o]+[\+|-|=][r|w|x|s|u|t]+\,)*[u|g|o]+[\+|-|=][r|w|x|s|u|t]+)"
_SINGLE_QUOTED_RE = r"((?:\s+|^)'[^']*'(?:\s+|$))"
_WORD_RE = re.compile(rf"({_SINGLE_QUOTED_RE}+|{_PERMISSION_RE}+|(?:[^\s,\"]|\"(?:\.|[^\"])*\")+)")
_SPECIAL_RE = re.compile(r"[^ ]*[_\.\*|\\|\/|\~|\@|\%|\#|\?|\+|\$|\{|\}|\<|\>]+[^ ]*")
_ENGLISH_RE = re.compile(r"^[a-zA-Z][a-z]*(-[a-z]+)*$", re.IGNORECASE)
_ABBREVIATIONS = frozenset({"i.e", "i.e.", "e.g", "e.g.", "s.a", "s.a.", "s.t", "s.t.", "'s", "'t"})
STOPWORDS = frozenset(
    """
    the has have had here there do how i i'd i'll i'm i've me my myself can could did does doing must
    should would you you'd you'll you're you've your yours yourself yourselves he he'd he'll he's her
    here's hers herself him himself his she she'd she'll she's it's itself we we'd we'll we're we've
    their theirs themselves then there's they they'd they'll they're they've let let's this what's
    how's
    """.split()
)
NUMBER_WORDS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "twenty-four": 24,
}
_CLEAN_SUBS = (
    (r"\([^)]*\)", ""),
    (r"(,\s+)|(,$)", " "), (r"(;\s+)|(;$)", " "), (r"(:\s+)|(:$)", " "), (r"(\.\s+)|(\.$)", " "),
    (r"'s", " 's"), (r"'re", " 're"), (r"'ve", " 've"), (r"'d", " 'd"), (r"'t", " 't"),
    (r"^[T|t]o ", ""), (r"\$\{HOME\}", r"\\$HOME"),
    (r'"?normal\/regular"?', "regular"), (r'"?regular\/normal"?', "regular"),
    (r'"?normal/regualar"?', "regular"), (r'"?file\/directory"?', "file or directory"),
    (r'"?files\/directories"?', "files and directories"), (r'"?name\/path"?', "name or path"),
    (r'"?names\/paths"?', "name or path"), (r" pattern' ", " pattern "),
)


def _clean_description(text: str) -> str:
    text = re.sub(r"\([^)]*\)", "", text)
    for old, new in (("“", '"'), ("”", '"'), ("‘", "'"), ("’", "'"), ("`'", '"'), ("``", '"'),
                     ("''", '"'), ("(", " ( "), (")", " ) "), (" `", " '"), ("` ", "' "),
                     ("server`s", "server's")):
        text = text.replace(old, new)
    for pattern, repl in _CLEAN_SUBS[1:]:
        text = re.sub(pattern, repl, text)
    return text


def _quoted(word: str) -> tuple[bool, bool]:
    return word[:1] in ("'", '"'), word[-1:] in ("'", '"')


def nl_template(description: str) -> str:
    """The grouping key of a description: cleaned, tokenised, lower-cased, stop words dropped,
    number words as digits, plain words Porter2-stemmed (the original's ``basic_tokenizer``
    without its unpublished spelling corrector)."""
    words = []
    for match in _WORD_RE.findall(_clean_description(description)):
        word = match[0].strip()
        if word in ('"', "'"):
            continue
        starts, ends = _quoted(word)
        if len(word) > 1 and (word in _ABBREVIATIONS or _ENGLISH_RE.match(word)) and not (starts and ends):
            word = word.lower()
        if word.lower() in STOPWORDS:
            continue
        word = str(NUMBER_WORDS.get(word, word))
        starts, ends = _quoted(word)
        if not starts and not ends and not _SPECIAL_RE.match(word):
            word = stem(word)
        if word.strip():
            words.append(word)
    return " ".join(words)



# ---------------------------------------------------------------------------------------------
# Reading, filtering, splitting, caching
# ---------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise MalformedDataError(f"{path}:{number}: empty line")
    return lines


def _read_tokens(path: Path) -> list[int]:
    tokens = []
    for number, line in enumerate(_read_lines(path), 1):
        try:
            token = int(line)
        except ValueError:
            raise MalformedDataError(f"{path}:{number}: fold token {line!r} is not an integer") from None
        if not 0 <= token < NUM_FOLDS:
            raise MalformedDataError(f"{path}:{number}: fold token {token} outside 0..{NUM_FOLDS - 1}")
        tokens.append(token)
    return tokens


def top_utilities(commands: Iterable[tuple[str, ...] | None], k: int = NUM_UTILITIES) -> frozenset[str]:
    """The ``k`` most frequent utilities outside the excluded lists, counted once per command;
    ties keep first-appearance order (the original's stable sort over an insertion-ordered dict)."""
    counts: collections.Counter[str] = collections.Counter()
    for utils in commands:
        counts.update(list(dict.fromkeys(utils or ())))
    ranked = sorted((u for u in counts if u not in EXCLUDED_UTILITIES), key=lambda u: -counts[u])
    return frozenset(ranked[:k])


def build_pairs(nl_lines: list[str], cm_lines: list[str], tokens: list[int],
                paths: tuple[Path, ...] | None = None) -> list[Pair]:
    """Filter, group, deal folds and move leaked dev/test pairs; returns kept pairs in split order."""
    nl_path, cm_path = (paths or (Path("all.nl"), Path("all.cm")))[:2]
    if len(nl_lines) != len(cm_lines):
        raise MalformedDataError(
            f"{nl_path} has {len(nl_lines)} lines but {cm_path} has {len(cm_lines)}; "
            f"first unmatched line: {min(len(nl_lines), len(cm_lines)) + 1}")
    utilities = [command_utilities(cm.strip()) for cm in cm_lines]
    allowed = top_utilities(utilities)
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for index, (nl, utils) in enumerate(zip(nl_lines, utilities, strict=True)):
        nl = nl.strip()
        if utils is not None and len(nl.split()) <= MAX_NL_WORDS and set(utils) <= allowed:
            groups[nl_template(nl)].append(index)
    # templates past the end of the published token list get no fold and are dropped (see README)
    templates = sorted(groups)[: len(tokens)]
    folds = {i: tokens[t] for t, key in enumerate(templates) for i in groups[key]}
    ordered = [i for key in templates for i in groups[key]]
    train = [i for i in ordered if folds[i] < DEV_FOLD]
    train_commands = {cm_lines[i].strip() for i in train}
    moved = [i for f in (DEV_FOLD, TEST_FOLD) for i in ordered if folds[i] == f
             and cm_lines[i].strip() in train_commands]
    moved_set = set(moved)
    rest = [i for f in (DEV_FOLD, TEST_FOLD) for i in ordered if folds[i] == f and i not in moved_set]

    def pair(i: int, split: str) -> Pair:
        return Pair(i + 1, nl_lines[i].strip(), cm_lines[i].strip(), utilities[i], folds[i], split)

    return [pair(i, "train") for i in train + moved] + [
        pair(i, "dev" if folds[i] == DEV_FOLD else "test") for i in rest]


def _source_paths() -> tuple[Path, Path, Path]:
    return tuple(data_file("nl2bash", name) for name in SOURCE_FILES)  # type: ignore[return-value]


def _cache_key(paths: Iterable[Path]) -> str:
    """Hash of the builder version, this module's code and the source files."""
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    code = (Path(__file__), FLAGS_FILE, FLAGS_FILE.with_suffix(".py"), Path(__file__).with_name("stem.py"))
    for path in (*code, *paths):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_split(*, use_cache: bool = True) -> dict[str, list[Pair]]:
    """The three splits keyed ``train``/``dev``/``test``, built once and cached as JSON."""
    paths = _source_paths()
    cache_file = cache_dir("datasets") / f"nl2bash-{_cache_key(paths)}.json"
    if use_cache and cache_file.exists():
        with open(cache_file, encoding="utf-8") as fh:
            raw = json.load(fh)
        pairs = [Pair(**{**r, "utilities": tuple(r["utilities"])}) for r in raw]
    else:
        nl_path, cm_path, tok_path = paths
        pairs = build_pairs(_read_lines(nl_path), _read_lines(cm_path), _read_tokens(tok_path), paths)
        if use_cache:
            atomic_write_text(cache_file, json.dumps([asdict(p) for p in pairs], ensure_ascii=False))
    out: dict[str, list[Pair]] = {"train": [], "dev": [], "test": []}
    for p in pairs:
        out[p.split].append(p)
    return out


def load_pairs(split: str) -> list[Pair]:
    """Pairs of ``train``/``validation``/``test`` (``dev`` is accepted for ``validation``)."""
    name = SPLIT_NAMES.get(split, split)
    if name not in ("train", "dev", "test"):
        raise ValueError(f"unknown NL2Bash split {split!r}; choose from train, validation, test")
    return build_split()[name]


def utility_frequencies(split: str = "train") -> list[tuple[str, int]]:
    """``(utility, number of pairs using it)`` for ``split``, most frequent first (ties by name)."""
    counts = collections.Counter(u for p in load_pairs(split) for u in set(p.utilities))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
