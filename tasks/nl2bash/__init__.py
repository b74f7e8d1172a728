"""NL2Bash (Lin et al., 2018): English description -> one-line bash command; corpus BLEU.

Splits are rebuilt from ``all.nl``/``all.cm`` by :mod:`promptintern.tasks.nl2bash.split` (the
published filtering + template-grouped fold procedure, approximated; see that module and
``README.md``).  Instance ids are 1-based line numbers of ``all.nl``; queries use the paper's
Figure 7 format ``[NL] ... [/NL]``; answers are written as a ```` ```bash ```` block.
"""

from __future__ import annotations

import re

from promptintern.tasks.base import Instance, Task

_FENCE_RE = re.compile(r"```[ \t]*(?:bash|sh|shell|console|zsh)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_TAG_RE = re.compile(r"\[BASH\](.*?)(?:\[/BASH\]|$)", re.DOTALL | re.IGNORECASE)
_INLINE_RE = re.compile(r"`([^`\n]+)`")
_PREAMBLE_RE = re.compile(
    r"^(?:sure|certainly|okay|ok|here(?:'s| is| are)|the (?:bash |shell )?command|command|answer|"
    r"you can|to do this|use|output|solution)\b[^\n]*?[:.!]?\s*$",
    re.IGNORECASE,
)
_PROMPT_RE = re.compile(r"^(?:\$|>)\s+")


def query_text(description: str) -> str:
    """The paper's NL2Bash question format (Figure 7)."""
    return f"[NL] {description.strip()} [/NL]"


def _first_command_line(text: str) -> str:
    for line in text.splitlines():
        line = _PROMPT_RE.sub("", line.strip())
        if line and not line.startswith("#") and not _PREAMBLE_RE.match(line):
            return line
    return ""


def extract_command(output: str) -> str:
    """The bash command in raw model output.

    Order: the first ```` ``` ```` fence (optionally ``bash``/``sh``), then ``[BASH] ... [/BASH]``
    tags, then a single inline ```` `command` ````, then the first non-empty line that is not a chat
    preamble ("Here is the command:") or a comment.  Shell prompts (``$ ``) are stripped, and so
    are surrounding ``[NL]``/``[BASH]`` tags the model may echo.
    """
    text = output.replace("\r\n", "\n").strip()
    for pattern in (_FENCE_RE, _TAG_RE):
        match = pattern.search(text)
        if match and match.group(1).strip():
            return _first_command_line(match.group(1))
    text = re.sub(r"\[/?NL\].*?(?:\[/NL\]|$)", "", text, flags=re.DOTALL | re.IGNORECASE).strip()
    candidate = _first_command_line(text)
    inline = _INLINE_RE.findall(text)
    if len(inline) == 1 and (not candidate or _PREAMBLE_RE.match(candidate) or "`" in candidate):
        return inline[0].strip()
    return candidate.strip("`").strip()


class NL2BashTask(Task):
    """Rebuilt splits, ``[NL] ... [/NL]`` queries, commands extracted from fences; scored by ``bleu``."""

    def load(self, split: str) -> list[Instance]:
        from promptintern.tasks.nl2bash.split import load_pairs, nl_template

        self.check_split(split)
        # group: the normalised description the split deals folds by; the pairs of one description are one
        # cluster for the bootstrap (a model reading the same question answers alike)
        return [
            Instance(
                id=str(p.line),
                split=split,
                query=query_text(p.nl),
                reference=p.cm,
                meta={"description": p.nl, "utilities": list(p.utilities), "fold": p.fold},
                group=nl_template(p.nl),
            )
            for p in load_pairs(split)
        ]

    def extract(self, output: str) -> str:
        return extract_command(output)
