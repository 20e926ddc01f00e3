"""The schema's "not empty after clean-up" pattern says exactly what normalise_text keeps."""

from __future__ import annotations

import re

from artifact.text import normalise_text, visible_pattern


def test_the_visible_pattern_matches_exactly_the_characters_normalisation_keeps():
    pattern = re.compile(visible_pattern())
    disagree = [hex(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF
                and (pattern.search(chr(code)) is not None) != bool(normalise_text(chr(code)))]
    assert disagree == []
    assert pattern.search("\u200b \t\u00a0\ufeff") is None and pattern.search(" \u200bdrill ")
