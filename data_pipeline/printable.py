"""Text from files (a search's name, trial ids, error lines, config values, paths) made safe to print or to put into
Markdown. An experiment folder may come from anyone (docs/reliability.md, Security): a name holding a newline must
not add a line to a table, an ANSI escape must not rewrite the terminal, a `|` or `<script>` must not change the
structure of report.md. One rule for the terminal (`term`) and one for Markdown (`md`, `md_block`); every place
that prints or writes such text calls them."""
from __future__ import annotations

import re
import unicodedata

# Characters that move the cursor, change colours or reorder what is shown: C0/C1 controls and DEL (newline, tab,
# ESC...), line/paragraph separators, and the bidirectional overrides that make text read other than it is stored.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI


def _visible(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def term(value, lines: bool = False) -> str:
    """`value` as text a terminal shows as written: every control character as a visible escape (`\\x1b`, `\\n`);
    lines=True keeps newlines (a message of several lines that we wrote ourselves around the value)."""
    s = str(value)
    return "".join(_visible(ch) if _unsafe(ch) and not (lines and ch == "\n") else ch for ch in s)


# CommonMark lets any ASCII punctuation be escaped with a backslash. These have a meaning anywhere in a line
# (emphasis, code, links and images, raw HTML and entities, table cells, strike-through, maths on GitHub)...
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~$])")
# ...and these only at the start of a line (heading, quote, list item, setext underline, ordered list).
_MD_LINE_START = re.compile(r"^([#>+=-]|\d+(?=[.)]))")
_CODE_SAFE = re.compile(r"[^`|]+")


def md(value, code: bool = False) -> str:
    """`value` as literal Markdown text on one line, also inside a table cell. code=True: as a code span when that
    shows it unchanged (no backtick, pipe or control character in it), else as escaped text."""
    s = term(value)  # first: no newline can start a new block, no escape reaches a terminal that shows the file
    if code and _CODE_SAFE.fullmatch(s) and s.strip() == s:
        return f"`{s}`"
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" if m.group(1)[0].isdigit() else "\\" + m.group(1), s)


def md_block(text: str) -> list[str]:
    """Lines of preformatted text (e.g. `mmsa status`'s table) as a fenced code block that no line can close: the
    fence is longer than any run of backticks inside, and each line is terminal-safe."""
    lines = [term(l) for l in str(text).split("\n")]
    longest = max((len(m) for l in lines for m in re.findall(r"`+", l)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *lines, fence]
