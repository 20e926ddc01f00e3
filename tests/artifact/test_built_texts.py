"""The built artifact's keyword texts went through the one normalisation, references decoded
(issue #26, item 6: ~1,200 sample keywords were stored, shown and encoded as "Plumber&#39;s
Putty"). Read against the raw sample file, not through the project's readers."""

from __future__ import annotations

import csv
import html
import json
import re

import pytest

from artifact.text import normalise_text

pytestmark = pytest.mark.slow

REFERENCE = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


def test_the_keyword_store_holds_the_decoded_titles(static_artifact, data_dir):
    manifest = json.loads((static_artifact / "manifest.json").read_text())
    rows = (static_artifact / manifest["index"]["store"]).read_text(encoding="utf-8").splitlines()[1:]
    stored = dict(line.split("\t", 1) for line in rows)
    with open(data_dir / "homedepot_products.tsv", encoding="utf-8", newline="") as handle:
        raw = {f"hd:{r['product_uid']}": r["title"] for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)}
    escaped = [kid for kid in stored if kid in raw and REFERENCE.search(raw[kid])]
    assert len(escaped) >= 5  # the slice holds titles the catalogue escaped
    for kid in escaped:
        assert stored[kid] == normalise_text(html.unescape(raw[kid]))
    assert not any(REFERENCE.search(text) and html.unescape(text) != text for text in stored.values())
