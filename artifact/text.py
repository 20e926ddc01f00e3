"""The one text normalisation: what training, the build and the served queries all see.

A query typed by a user and the same words in a training file must reach the tokenizer
as the same string, or the student is trained on one distribution and served another.
"""

from __future__ import annotations

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
