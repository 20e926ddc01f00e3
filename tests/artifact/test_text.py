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


# ---- HTML character references (issue #26, item 6) ----


def test_the_catalogues_references_are_decoded():
    assert normalise_text("Plumber&#39;s Putty") == "Plumber's Putty"
    assert normalise_text("Black &amp; Decker 20V") == "Black & Decker 20V"
    assert normalise_text("Wireless &quot;RF&quot; Motion Sensor") == 'Wireless "RF" Motion Sensor'
    assert normalise_text("2 in.&amp;nbsp;PVC") == "2 in. PVC"  # escaped twice, and a no-break space is a space
    assert normalise_text("&#8203;&nbsp;") == ""  # references to invisible characters leave nothing


def test_an_escaped_escape_is_decoded_to_the_end_so_normalising_twice_changes_nothing():
    for text, decoded in (("&amp;amp;", "&"), ("&amp;amp;amp;#39;", "'"), ("&amp;lt;b&amp;gt;", "<b>"),
                          ("&&#35;38;", "&"), ("&&&#35;35;38;", "&"), ("&am&#1;p;", "&")):
        assert normalise_text(text) == decoded, text
        assert normalise_text(decoded) == decoded
    # A nest thousands deep ("&&&&#35;35;35;38;") is one pass (decoding the whole text until it
    # stops changing took one pass per level: seconds on a 16k-character query).
    depth = 4000
    assert normalise_text("&" * (depth + 1) + "#35;" + "35;" * (depth - 1) + "38;") == "&"


def test_only_complete_references_are_decoded():
    # HTML's legacy names without ";" are left alone: what people type is not HTML.
    for text in ("AT&T", "salt&notes", "R&D", "m&ms", "&lt", "&copy 2024", "&notaname;", "&#;", "&#x;", "a & b; c"):
        assert normalise_text(text) == text
    assert normalise_text("x &lt; y") == "x < y" and normalise_text("&#x1F600;") == "\U0001F600"


def test_no_reference_is_left_in_the_sample_catalogue(data_dir):
    from models.data import load_sample

    titles = load_sample("products").texts
    left = [t for t in titles if re.search(r"&(#[0-9]+|#x[0-9a-fA-F]+|amp|quot|lt|gt|apos|nbsp);", t)]
    assert left == []
    assert any("Plumber's Putty" in t for t in titles)


def test_the_ascii_shortcut_gives_what_the_general_path_gives():
    from hypothesis import given, settings, strategies as st

    from artifact.text import normalise_any

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
    def check(text):
        assert normalise_text(text) == normalise_any(text)

    check()
    assert normalise_text("  cordless   drill ") == "cordless drill"
