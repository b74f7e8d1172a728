"""Extract the Python solution from a model's answer to an MBPP prompt.

Order of preference: ``[PYTHON]...[/PYTHON]`` / ``[BEGIN]...[DONE]`` / ``<code>`` tags, then markdown
fences (```` ```python ````, ```` ```py ````, bare ```` ``` ````, ``~~~``, unterminated), then bare text,
where the largest parseable regions starting at a ``def``/``class``/``import`` line are kept (this
drops chat preambles and trailing prose).  ``>>>`` doctest transcripts keep only their input lines.
Several blocks: the ones defining a function or class plus import-only blocks are joined in order.
Finally top-level ``if __name__ == "__main__":`` blocks and call-free expression lines (stray prose) go.
"""

from __future__ import annotations

import ast
import re
import textwrap

PY_LANGS = {"", "python", "python3", "py", "py3", "pycon", "ipython", "python-repl"}
_TAGS = [(r"\[PYTHON\]", r"\[/PYTHON\]"), (r"\[BEGIN\]", r"\[DONE\]"), (r"<code>", r"</code>")]
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?s>|\[/?INST\]", re.I)
_OPEN_FENCE = re.compile(r"(`{3,}|~{3,})[ \t]*([\w+#.-]*)[ \t]*$")
_CODE_START = re.compile(r"^[ \t]*(async[ \t]+def[ \t]|def[ \t]|class[ \t]|import[ \t]|from[ \t]+[\w.]+[ \t]+import[ \t]|@\w)")
_DEFINES = re.compile(r"^[ \t]*(async[ \t]+def|def|class)[ \t]+\w+", re.M)
_IMPORT_LINE = re.compile(r"^[ \t]*(import[ \t]|from[ \t]+[\w.]+[ \t]+import[ \t]|#)")
MAX_REGION_LINES = 400


def extract_code(output: str) -> str:
    """Best-effort Python source in ``output``; ``""`` when there is none.  Never raises."""
    try:
        return _tidy(_extract(output or ""))
    except Exception:  # noqa: BLE001 - extraction must never break an evaluation run
        return ""


def _extract(text: str) -> str:
    text = _SPECIAL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    for start, end in _TAGS:
        inner = re.findall(rf"{start}(.*?)(?:{end}|\Z)", text, re.S | re.I)
        inner = [block for block in inner if block.strip()]
        if inner:
            return _choose([_extract(block) if "```" in block else block for block in inner])
    blocks = _fenced_blocks(text)
    python = [body for lang, body in blocks if lang in PY_LANGS] or [
        body for _, body in blocks if _DEFINES.search(body)]
    if python:
        return _choose([_strip_doctest(body) for body in python])
    if re.search(r"^[ \t]*>>>", text, re.M):
        text = _strip_doctest(text)
    return _choose(_code_regions(text))


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block; an unterminated last fence runs to the end."""
    blocks, body, fence, lang = [], [], "", ""
    for line in text.split("\n"):
        stripped = line.strip()
        if not fence:
            match = _OPEN_FENCE.search(line)
            if match:
                fence, lang, body = match.group(1), match.group(2).lower(), []
            continue
        if stripped.startswith(fence) and not stripped.strip(fence[0]):
            blocks.append((lang, "\n".join(body)))
            fence = ""
        elif stripped.startswith(fence) and _OPEN_FENCE.fullmatch(stripped):  # unclosed block, new "```py"
            blocks.append((lang, "\n".join(body)))
            lang, body = _OPEN_FENCE.fullmatch(stripped).group(2).lower(), []
        elif stripped.endswith(fence) and not stripped.startswith(fence):  # "    return x```"
            body.append(line.rstrip()[: -len(fence)])
            blocks.append((lang, "\n".join(body)))
            fence = ""
        else:
            body.append(line)
    if fence and any(line.strip() for line in body):
        blocks.append((lang, "\n".join(body)))
    return blocks


def _strip_doctest(text: str) -> str:
    """Keep the ``>>>``/``...`` input lines of a doctest transcript; other text is returned unchanged."""
    if not re.search(r"^[ \t]*>>>", text, re.M):
        return text
    code: list[str] = []
    for line in text.split("\n"):
        stripped = line.lstrip()
        for prompt in (">>>", "..."):
            if stripped.startswith(prompt) and (prompt == ">>>" or code):
                rest = stripped[len(prompt):]
                code.append(rest[1:] if rest.startswith(" ") else rest)
                break
    return "\n".join(code)


def _parses(lines: list[str]) -> bool:
    try:
        ast.parse(textwrap.dedent("\n".join(lines)))
        return True
    except (SyntaxError, ValueError):
        return False


def _code_regions(text: str) -> list[str]:
    """Maximal parseable line ranges that start at a code-looking line (preambles and prose dropped)."""
    lines = text.split("\n")
    if _parses(lines) and any(_CODE_START.match(line) for line in lines):
        return [text]
    regions, floor, i = [], 0, 0
    while i < len(lines):
        if not _CODE_START.match(lines[i]):
            i += 1
            continue
        end = next((j for j in range(min(len(lines), i + MAX_REGION_LINES), i, -1) if _parses(lines[i:j])), i)
        if end == i:
            i += 1
            continue
        start = i
        while start > floor and (not lines[start - 1].strip() or _parses(lines[start - 1:end])):
            start -= 1
        regions.append("\n".join(lines[start:end]))
        floor = i = end
    if not regions and _parses(lines):
        regions = [text]
    return regions


def _choose(blocks: list[str]) -> str:
    """Join defining blocks (and import-only ones); with no definitions, join everything."""
    blocks = [textwrap.dedent(block).strip("\n") for block in blocks if block.strip()]
    if any(_DEFINES.search(block) for block in blocks):
        blocks = [block for block in blocks if _DEFINES.search(block) or _imports_only(block)]
    unique = list(dict.fromkeys(blocks))
    return "\n\n".join(unique)


def _imports_only(block: str) -> bool:
    return all(_IMPORT_LINE.match(line) for line in block.split("\n") if line.strip())


def _tidy(code: str) -> str:
    """Drop ``if __name__ == "__main__":`` blocks and call-free expression statements (stray prose)."""
    code = textwrap.dedent(code).strip("\n")
    if not code.strip():
        return ""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code + "\n"
    lines = code.split("\n")
    for node in reversed(tree.body):
        if _is_main_guard(node) or _is_inert(node):
            del lines[node.lineno - 1: node.end_lineno]
    return "\n".join(lines).strip("\n") + "\n" if any(line.strip() for line in lines) else ""


def _is_inert(node: ast.stmt) -> bool:
    """An expression statement that calls nothing: stray prose like ``Output`` or ``[PYTHON]``."""
    return isinstance(node, ast.Expr) and not any(isinstance(n, ast.Call) for n in ast.walk(node))


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    names = [node.test.left, *node.test.comparators]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
