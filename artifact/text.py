"""The one text normalisation: what training, the build and the served queries all see.

A query typed by a user and the same words in a training file must reach the tokenizer
as the same string, or the student is trained on one distribution and served another.
"""

from __future__ import annotations

import functools
import html
import html.entities
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
# Zero-width and other invisible format characters (Unicode category Cf: ZWSP, ZWJ, BOM,
# bidi marks): they carry no words, so a query made only of them is empty.
# Lone surrogates (Cs) cannot even be encoded as UTF-8.
_INVISIBLE = {"Cc", "Cf", "Cs"}

# HTML character references as scraped catalogues carry them ("Plumber&#39;s Putty",
# "Black &amp; Decker"): only the complete form, ending in ";". html.unescape alone would
# also decode HTML's legacy names without it, turning a typed "salt&notes" into "salt¬es".
_REFERENCE = re.compile(r"&(?:#[0-9]{1,10}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{0,31});")
_LONGEST_REFERENCE = 34  # "&" + a 32-character name + ";"


def _reference(ref: str) -> str:
    if ref[1] == "#":
        return html.unescape(ref)  # numeric: HTML's rules (invalid code points -> U+FFFD or nothing)
    return html.entities.html5.get(ref[1:], ref)  # an unknown name stays as typed


def decode_references(text: str) -> str:
    """HTML character references decoded until none is left ("&amp;#39;" -> "'", an escaped
    escape included), NFC, so that decoding again changes nothing.

    One left-to-right pass over a stack of what is still to be read: at each ";" written out,
    a reference that the output now ends with is taken back and its characters are read next
    (they may complete another one: "&amp;lt;" -> "&lt;" -> "<"). Each decoding shortens the
    text, so the work is linear in its length; decoding the whole text again and again until it
    stops changing is quadratic for "&&&&#35;35;35;38;"-like nests (1.4 s for 16k characters)."""
    text = unicodedata.normalize("NFC", text)
    if "&" not in text or ";" not in text:
        return text
    out: list[str] = []
    stack = [(text, 0)]
    while stack:
        part, start = stack.pop()
        end = part.find(";", start)
        if end < 0:
            out.extend(part[start:])
            continue
        out.extend(part[start:end + 1])
        stack.append((part, end + 1))
        if len(out) < 4 or not out[-2].isascii() or not out[-2].isalnum():
            continue  # a reference ends with a letter or digit before its ";"
        tail = "".join(out[-_LONGEST_REFERENCE:])
        amp = tail.rfind("&")
        if amp < 0 or not _REFERENCE.fullmatch(tail, amp):
            continue
        ref = tail[amp:]
        decoded = _reference(ref)
        if decoded == ref:
            continue
        del out[len(out) - len(ref):]
        # NFC per piece: a decoded U+037E is ";", which may end another reference.
        stack.append((unicodedata.normalize("NFC", decoded), 0))
    # NFC across the pieces (a decoded combining mark joins the letter before it); composing
    # never makes the ASCII a reference is written in, so none appears here.
    return unicodedata.normalize("NFC", "".join(out))


def normalise_text(text: str) -> str:
    """HTML character references decoded, NFC, control, invisible format and surrogate
    characters to spaces, whitespace runs to one space, trimmed."""
    if text.isascii() and text.isprintable() and "&" not in text:
        # The common query, on the serving path: printable ASCII holds no reference, nothing NFC
        # changes and no control or format character, so only the whitespace rule applies
        # (the general path below gives the same; tests/artifact/test_text.py checks it).
        return _WHITESPACE.sub(" ", text).strip()
    return normalise_any(text)


def normalise_any(text: str) -> str:
    """``normalise_text`` without its ASCII shortcut (what the shortcut is tested against)."""
    text = decode_references(text)
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
    refuses them all the same. Nor can a regular expression follow the decoding of character
    references: a text whose only visible characters spell references to invisible ones
    ("&#8203;", "&nbsp;") matches and is refused as empty all the same."""
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
