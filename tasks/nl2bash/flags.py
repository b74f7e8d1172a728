"""The "command parses" test of the NL2Bash filter: bashlex plus an option/argument lint.

The original filter (TellinaTool/nl2bash, ``bashlint/lint.py`` + ``grammar.py``) keeps a command only
if its own bashlex fork parses it into a single tree *and* every simple command in it lints against a
synopsis grammar of ~130 utilities.  This module re-implements that test with bashlex 0.18 and our own
tables (``flags.yaml``); the rules below are the original's behaviour, written anew:

* structure: one command, pipeline or ``cmd;``/``cmd&``; sequences, compounds, loops and functions
  fail; a leading assignment keeps only its command substitutions; ``$VAR``/``~`` inside an
  assignment or after a command substitution fail; a head word with expansions is an argument;
* a utility must have a grammar; each following word is, in this order: ``--`` (the next word is
  not an option), the
  pending argument of the previous option, an option, else the first open positional slot;
* options: a known long option takes ``=value`` only if it has an argument (otherwise error), an
  unknown long option is an error; a short word that is not an option is matched against
  ``-X`` + attached argument, or a bundle ``-abc`` whose letters must all be options (error if one is
  not); otherwise the word is not an option and goes to the positional slots;
* positional slots: a single slot takes one word; a list slot any number; a ``@cmd`` slot takes a
  quoted command (parsed recursively; an unquoted word skips it); ``@rest`` parses the remaining
  words as a command (``xargs``, ``nohup``, ``watch``); a word no slot takes is an error, except that
  a redirection is then ignored (a redirection taken by a slot is an error);
* an option still waiting for its argument at the end is an error; ``find`` accepts ``( ) ! , -o -a``
  and every utility ``-and -or -not -prune``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import bashlex
import yaml

FLAGS_FILE = Path(__file__).with_name("flags.yaml")

#: Grammar utilities without a table (black/grey-listed: never among the top 100); any arguments parse.
UNCHECKED_UTILITIES = frozenset(
    "awk sed vim nano less more tmux set source pushd popd true false sudo".split())
#: The original rewrites these heads when collecting utilities.
ALIASES = {"egrep": "grep", "fgrep": "grep"}
_FIND_ONLY_OPERATORS = frozenset({"(", ")", "\\(", "\\)", "!", "-o", "-a", ","})
_OPERATORS = frozenset({"-not", "-prune", "-and", "-or", "||", "&&"})
_QUOTES = ("'", '"')


@dataclass(frozen=True)
class Synopsis:
    """One utility: option -> kinds of arguments it owes, and positional slots in order."""

    options: dict[str, tuple]
    slots: tuple[str, ...]  # "one", "many", "cmd", "rest"


@functools.lru_cache(maxsize=1)
def load_synopses(path: Path = FLAGS_FILE) -> dict[str, Synopsis]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    table = {}
    for utility, spec in raw.items():
        options: dict[str, tuple] = {}
        for key, kinds in (("flags", ()), ("args", ("arg",)), ("args2", ("arg", "arg")),
                           ("glued", ("glued",)), ("cmd", ("cmd",))):
            for name in str(spec.get(key, "")).split():
                options[name] = kinds
        for name, stops in (spec.get("exec") or {}).items():
            options[name] = (("exec", frozenset(stops)),)
        slots = []
        for slot in str(spec.get("pos", "")).split():
            slots.append({"@cmd": "cmd", "@rest": "rest"}.get(slot, "many" if slot.endswith("...") else "one"))
        table[utility] = Synopsis(options, tuple(slots))
    return table


def grammar_utilities() -> frozenset[str]:
    return frozenset(load_synopses()) | UNCHECKED_UTILITIES


class Reject(Exception):
    """The command does not parse under the original rules."""


def parse_single(text: str):
    """bashlex tree of ``text`` if it is exactly one top-level node, else ``None``."""
    try:
        trees = bashlex.parse(text)
    except Exception:  # bashlex raises ParsingError, NotImplementedError, IndexError, ...
        return None
    return trees[0] if len(trees) == 1 else None


class Linter:
    """Walk one bashlex tree like the original normaliser, linting options and collecting utilities."""

    def __init__(self, source: str, utilities: list[str] | None = None) -> None:
        self.source = source
        self.utilities = utilities if utilities is not None else []
        self.attached = False  # whether the original's normalised tree gets any node

    def raw(self, node) -> str:
        return self.source[node.pos[0]:node.pos[1]]

    # -- structure ------------------------------------------------------------------------
    def top(self, node) -> None:
        if node.kind == "command":
            self.command(node.parts)
        elif node.kind == "pipeline":
            for part in node.parts:
                if part.kind == "command":
                    self.command(part.parts)
                elif part.kind != "pipe":
                    raise Reject(part.kind)
        elif node.kind == "list" and len(node.parts) <= 2:  # "cmd ;" or "cmd &"
            self.top(node.parts[0])
        else:
            raise Reject(node.kind)

    def substitution(self, node) -> None:
        if node.kind not in ("commandsubstitution", "processsubstitution"):
            raise Reject(node.kind)  # $VAR / ~ as a separate part is unsupported
        self.top(node.command)

    def argument(self, node) -> None:
        """Any argument position: plain words pass, expansions are walked, redirections fail."""
        if node.kind == "assignment":
            for part in node.parts or ():
                self.substitution(part)
            return
        if node.kind != "word":
            raise Reject(node.kind)
        self.attached = True
        if node.parts and node.parts[0].kind not in ("parameter", "tilde"):
            for part in node.parts:
                self.substitution(part)

    def quoted_command(self, node) -> None:
        token = self.raw(node)
        inner_text = token[1:-1]
        tree = parse_single(inner_text)
        if tree is None:
            raise Reject("sub-command")
        inner = Linter(inner_text, self.utilities)
        inner.top(tree)
        self.attached = True

    def command(self, parts) -> None:
        if not parts:
            return
        head = parts[0]
        if head.kind == "assignment":  # the rest of the command is ignored
            for part in head.parts or ():
                self.substitution(part)
            return
        if head.kind != "word":
            raise Reject(head.kind)
        if head.parts:
            self.argument(head)
            return
        name = self.raw(head)
        synopses = load_synopses()
        if name not in synopses and name not in UNCHECKED_UTILITIES:
            raise Reject(f"no grammar for {name}")
        self.attached = True
        self.utilities.append(ALIASES.get(name, name))
        if name in synopses:
            self.lint(name, synopses[name], list(parts[1:]))
        else:
            for node in parts[1:]:
                self.argument(node)

    # -- options and positional arguments ---------------------------------------------------
    @staticmethod
    def option(syn: Synopsis, token: str) -> list | None:
        """Arguments ``token`` leaves owing if it is an option, ``None`` if it is not one."""
        opts = syn.options
        if token.startswith("--"):
            name, _, value = token.partition("=")
            if name not in opts:
                raise Reject(f"unknown long option {name}")
            kinds = opts[name]
            if not kinds:
                if value:
                    raise Reject(f"{name} takes no argument")
                return []
            if not value:
                return list(kinds)
            if kinds[0] == "cmd":
                raise Reject("command argument given inline")
            return []
        if token in opts:
            kinds = opts[token]
            return [] if not kinds or kinds[0] == "glued" else list(kinds)
        head = token[:2]
        if head in opts:
            if opts[head]:  # argument attached: -n5
                if opts[head][0] == "cmd" or isinstance(opts[head][0], tuple):
                    raise Reject("command argument given inline")
                return []
            for j in range(2, len(token)):  # bundle of single-letter options
                kinds = opts.get("-" + token[j])
                if kinds is None:
                    raise Reject(f"unknown option -{token[j]} in {token}")
                if kinds and j < len(token) - 1:
                    if kinds[0] == "cmd" or isinstance(kinds[0], tuple):
                        raise Reject("command argument given inline")
                    break
            return []
        for sign in "-+":
            if token.startswith(sign) and opts.get(sign):
                return []
        return None

    def lint(self, name: str, syn: Synopsis, parts: list) -> None:
        options_on = True
        filled = [False] * len(syn.slots)
        pending: list = []
        i = 0
        while i < len(parts):
            node = parts[i]
            if node.kind == "word" and node.word == "--":
                options_on = False  # only until the next word is placed (the original re-offers options)
                i += 1
                continue
            if pending:
                kind = pending[0]
                if isinstance(kind, tuple):  # find -exec ... ;
                    j = i
                    while j < len(parts) and getattr(parts[j], "word", None) not in kind[1]:
                        j += 1
                    self.command(parts[i:j])
                    pending = []
                    i = j + 1
                    continue
                if kind == "cmd":
                    if node.kind == "word" and not node.parts:
                        if not _is_quoted(self.raw(node)):
                            raise Reject("command argument without quotes")
                        self.quoted_command(node)
                        pending = []
                    else:
                        self.argument(node)  # the option keeps waiting for its command
                    i += 1
                    continue
                self.argument(node)
                pending.pop(0)
                i += 1
                continue
            matched = False
            if options_on and node.kind == "word" and (
                    not node.parts or (node.word.startswith("-") and node.parts[0].kind == "parameter")):
                word = node.word
                if word in _OPERATORS or (name == "find" and word in _FIND_ONLY_OPERATORS):
                    matched = True
                else:
                    owed = self.option(syn, self.raw(node))
                    if owed is not None:
                        pending = owed
                        matched = True
            if not matched:
                for k, slot in enumerate(syn.slots):
                    if filled[k]:
                        continue
                    if slot == "rest":
                        self.command(parts[i:])
                        i = len(parts)
                    elif slot == "cmd" and node.kind == "word" and not node.parts:
                        if not _is_quoted(self.raw(node)):
                            continue
                        self.quoted_command(node)
                    else:
                        self.argument(node)
                        filled[k] = slot == "one"
                    matched = True
                    break
            options_on = True
            if not matched:
                if node.kind not in ("redirect", "operator"):
                    raise Reject(f"unmatched word for {name}")
            i += 1
        if pending:
            raise Reject(f"{name}: option without its argument")


def _is_quoted(token: str) -> bool:
    return len(token) >= 2 and token[0] in _QUOTES and token[-1] in _QUOTES


def lint_utilities(text: str) -> tuple[str, ...] | None:
    """Utilities of the (surface-normalised) command ``text``, or ``None`` if it does not parse."""
    tree = parse_single(text)
    if tree is None:
        return None
    linter = Linter(text)
    try:
        linter.top(tree)
    except Reject:
        return None
    except (AttributeError, IndexError, TypeError):  # malformed bashlex nodes
        return None
    if not linter.attached:
        return None
    return tuple(linter.utilities)
