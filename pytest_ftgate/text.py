"""Text from data files and model replies, made safe to print.

An example id, a question, a reply or a benchmark title can hold control characters: ``ESC[2J``
clears a terminal and lets the text after it forge a "1 passed" line; a bidi override reorders
what a reviewer reads. ``safe`` renders each such character as a visible escape, so it can reach
a terminal, a failure message or a report without acting on it. The JSON report keeps raw text
(JSON escapes it itself); every other renderer passes data-derived text through ``safe``.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, bidi embeddings/overrides (U+202A-U+202E) and isolates
# (U+2066-U+2069), and the Unicode line and paragraph separators (which break lines too).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    if code == 0x0D:
        return "\\r"
    if code == 0x09:
        return "\\t"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: object, *, newlines: bool = False) -> str:
    """``text`` with control characters shown as escapes: ``"a\\x1b[2Jb"`` -> ``a\\x1b[2Jb``
    (a backslash, not an escape byte). ``newlines=True`` keeps line feeds (for a multi-line
    message whose lines are ours); otherwise a line feed shows as ``\\n``, so one value is one line."""
    return (_UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE).sub(_escape, str(text))
