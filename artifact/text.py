"""The one text normalisation: what training, the build and the served queries all see.

A query typed by a user and the same words in a training file must reach the tokenizer
as the same string, or the student is trained on one distribution and served another.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
# Zero-width and other invisible format characters (Unicode category Cf: ZWSP, ZWJ, BOM,
# bidi marks): they carry no words, so a query made only of them is empty.
# Lone surrogates (Cs) cannot even be encoded as UTF-8.
_INVISIBLE = {"Cc", "Cf", "Cs"}


def normalise_text(text: str) -> str:
    """NFC, control, invisible format and surrogate characters to spaces, whitespace runs to one space, trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(ch) in _INVISIBLE else ch for ch in text)
    return _WHITESPACE.sub(" ", text).strip()


@functools.cache
def visible_pattern() -> str:
    """A regular expression (JSON Schema ``pattern``: found anywhere in the string) for "holds
    at least one character ``normalise_text`` keeps": the API's schema states with it that a
    text of only whitespace, control or invisible characters is refused. BMP ranges as
    ``\\uXXXX`` escapes (Python and ECMA regexes agree on those), the few astral ones literal.
    Lone surrogates are left out: they are not Unicode scalar values, so no JSON Schema string
    holds one (and schema-driven generators drop a pattern that names them); the service
    refuses them all the same."""
    invisible = _INVISIBLE - {"Cs"}
    ranges, start = [], None
    for code in range(0x110000 + 1):
        ch = chr(code) if code < 0x110000 else ""
        dropped = bool(ch) and (ch.isspace() or unicodedata.category(ch) in invisible)
        if dropped and start is None:
            start = code
        elif not dropped and start is not None:
            ranges.append((start, code - 1))
            start = None

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "[^" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + "]"
