"""The artifact's judged dev queries for the playground (``GET /v1/judgments``).

The labels are the artifact's own (``eval/judged_dev.json``, written by the build and
checksummed by the manifest: artifact/judged.py), read once per artifact on first use. An
artifact built before the file existed has none, and the answer says so.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

from artifact.judged import read_judged

NO_FILE = ("This artifact carries no judged queries (it was built before the build wrote "
           "eval/judged_dev.json); rebuild it to see relevance labels.")

_lock = threading.Lock()
_cache: dict[str, Any] = {}  # artifact sha256 -> (manifest entry, labels); one artifact at a time


def judged_of(runtime) -> tuple[Optional[dict], dict[str, dict[str, float]]]:
    """(the manifest's ``judgments`` entry or None, normalised query -> keyword id -> relevance)."""
    entry = runtime.manifest.get("judgments")
    if not entry:
        return None, {}
    key = runtime.manifest.get("artifact_sha256") or str(runtime.root)
    with _lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = read_judged(Path(runtime.root) / entry["path"])
        return entry, _cache[key]


def answer(runtime, query: Optional[str]) -> dict[str, Any]:
    """Without a query: what the artifact holds and every judged query (the playground offers
    them); with one (already normalised): its labels, or ``judged: false``."""
    entry, labels = judged_of(runtime)
    if entry is None:
        return {"available": False, "note": NO_FILE}
    about = {"available": True, "split": entry.get("split"), "scale": entry.get("scale")}
    if query is None:
        return about | {"count": len(labels), "queries": list(labels)}
    found = labels.get(query)
    return about | {"query": query, "judged": found is not None, "labels": found or {}}
