"""The artifact's judged dev queries: relevance labels for the keywords it indexes.

Written by the build (``models/build.py``), read by the service for the playground's labels
(``GET /v1/judgments``). The queries are the sample data's judged Home Depot queries of the
**dev** split (held out from every training phase; the quality gate scores a subset of them),
each with the human relevance labels of the judged products this artifact indexes, by keyword
id (``hd:<product_uid>``). Labels run from 1 (irrelevant) to 3 (highly relevant); the project's
nDCG counts relevance - 1 as the gain (``models/eval/metrics.py``).

The file is listed in the manifest (``judgments``: path, split, query and label counts) and
checksummed like every other file of the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

FORMAT = "hlm-judged-v1"
PATH = "eval/judged_dev.json"
SCALE = "Home Depot search relevance: 1 (irrelevant) to 3 (highly relevant), averaged over raters"


def write_judged(root: Path, queries: Mapping[str, Mapping[str, float]], split: str = "dev") -> dict[str, Any]:
    """Write ``queries`` (normalised query text -> keyword id -> relevance) under ``root``;
    returns the manifest's ``judgments`` entry."""
    path = root / PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "split": split, "scale": SCALE,
            "queries": {q: dict(sorted(labels.items())) for q, labels in sorted(queries.items())}}
    path.write_text(json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    return {"path": PATH, "split": split, "queries": len(queries), "labels": sum(len(v) for v in queries.values()),
            "scale": SCALE}


def read_judged(path: Path) -> dict[str, dict[str, float]]:
    """normalised query text -> keyword id -> relevance; ValueError for another format."""
    body = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("queries"), dict):
        raise ValueError(f"{path} is not an {FORMAT} file")
    return body["queries"]
