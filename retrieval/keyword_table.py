"""The keyword table beside a vector index: ids, texts and attributes by label, and the postings
a filter is answered from. One implementation for the local indexes (``retrieval.hnsw``,
``retrieval.compressed``); each index holds the lock (``_cond``) its searches and writes share.

Labels: the artifact's rows are labels ``0..n-1``; a live upsert gets a fresh label, never
reused (see ``retrieval.hnsw``). The filter rule (equality per attribute, a list is "any of",
a keyword without the attribute does not match) is written once here and in
``matches_filter``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

ATTRIBUTES_HEADER = "hlm-attributes-v1"


def build_attributes(keyword_id: str) -> dict:
    """What the build's data says about a keyword: its source, the id's prefix ("hd", "mq")."""
    prefix, sep, _ = keyword_id.partition(":")
    return {"source": prefix} if sep and prefix else {}


def value_key(value: Any) -> tuple:
    """Equality key of an attribute value: True and 1 differ (a JSON boolean is not a number),
    1 and 1.0 do not."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    return ("s", value)


def matches_filter(attributes: dict, flt: dict) -> bool:
    """Whether a keyword's attributes pass a search filter, by the rule ``KeywordTable.allowed``
    applies inside a search: every named attribute present and equal (``value_key``) to the
    value, or to one of a list's values."""
    for name, want in flt.items():
        if name not in attributes:
            return False
        have = value_key(attributes[name])
        if not any(have == value_key(v) for v in (want if isinstance(want, list) else [want])):
            return False
    return True


def read_attributes(path: Path, rows: int) -> list[dict]:
    """``index/attributes.jsonl`` (written by ``hlm compact``): a header line, then one JSON object per store row."""
    with open(path, encoding="utf-8") as handle:
        if handle.readline().strip() != json.dumps(ATTRIBUTES_HEADER):
            raise ValueError(f"{path} does not start with the header {ATTRIBUTES_HEADER!r}")
        out = [json.loads(line) for line in handle]
    if len(out) != rows or not all(isinstance(a, dict) for a in out):
        raise ValueError(f"{path} has {len(out)} attribute rows but the keyword store has {rows}")
    return out


def write_attributes(path: Path, attributes: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(ATTRIBUTES_HEADER) + "\n")
        for attrs in attributes:
            handle.write(json.dumps(attrs, ensure_ascii=False, sort_keys=True) + "\n")


class KeywordTable:
    """Mixin: the table of a local index (labels -> id, text, attributes; id -> label; postings)."""

    _cond: threading.Condition

    def _init_table(self, ids: Sequence[str], texts: Sequence[str], attributes_path: Optional[Path]) -> None:
        if len(set(ids)) != len(ids):
            raise ValueError("the keyword store repeats an id")
        attrs = read_attributes(attributes_path, len(ids)) if attributes_path else [build_attributes(i) for i in ids]
        self._id: dict[int, str] = dict(enumerate(ids))
        self._text: dict[int, str] = dict(enumerate(texts))
        self._attrs: dict[int, dict] = dict(enumerate(attrs))
        self._vec: dict[int, np.ndarray] = {}  # full vectors of live upserts
        self._label: dict[str, int] = {kid: i for i, kid in enumerate(ids)}
        self._postings: dict[str, dict[tuple, set[int]]] = {}
        for label, attributes in self._attrs.items():
            self._post(label, attributes)
        self._next_label = len(ids)
        self._allowed_cache: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._id)

    def _post(self, label: int, attributes: dict) -> None:
        for name, value in attributes.items():
            self._postings.setdefault(name, {}).setdefault(value_key(value), set()).add(label)

    def _forget(self, label: int) -> None:
        self._vec.pop(label, None)
        for name, value in self._attrs.pop(label, {}).items():
            self._postings[name][value_key(value)].discard(label)
        del self._label[self._id.pop(label)]
        del self._text[label]

    def _add(self, keyword_id: str, label: int, text: str, attributes: dict, vector: np.ndarray) -> None:
        self._id[label], self._text[label], self._attrs[label] = keyword_id, text, dict(attributes)
        self._vec[label] = vector
        self._label[keyword_id] = label
        self._post(label, attributes)

    def _checked_change(self, delete_ids: Sequence[str], ids: Sequence[str], vectors: np.ndarray,
                        texts: Sequence[str], attributes: Sequence[dict]) -> Optional[np.ndarray]:
        """A change's upsert vectors as float32 [n, dim] (None: no upserts), or ValueError with
        one sentence; checked whole before an index is touched, so a refused change changes nothing."""
        if not (len(ids) == len(texts) == len(attributes)):
            raise ValueError("ids, texts and attributes differ in length")
        if len(set(ids)) != len(ids) or set(ids) & set(delete_ids):
            raise ValueError("an id appears twice in one change")
        if not len(ids):
            return None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if not np.isfinite(vectors).all():
            raise ValueError("a vector is not finite")
        return vectors

    def get(self, keyword_id: str) -> Optional[tuple[str, dict]]:
        """(text, attributes) of a live keyword, None if absent."""
        with self._cond:
            label = self._label.get(keyword_id)
            if label is None:
                return None
            return self._text[label], dict(self._attrs[label])

    # ---- what a filter can name (service/filters.py: GET /v1/info, the search's filter check) ----

    def attribute_counts(self) -> dict[str, list[tuple[Any, int]]]:
        """attribute -> [(value, live keywords carrying it)]; values and attributes no live keyword carries left out."""
        with self._cond:
            counts = {name: [(key[1], len(labels)) for key, labels in posting.items() if labels]
                      for name, posting in self._postings.items()}
        return {name: values for name, values in counts.items() if values}

    def match_counts(self, flt: dict) -> dict[str, Optional[list[int]]]:
        """Per attribute of ``flt``: None when no live keyword carries it, else how many live
        keywords carry each of its values (a list's values in order). Costs the filter's size."""
        out: dict[str, Optional[list[int]]] = {}
        with self._cond:
            for name, want in flt.items():
                posting = self._postings.get(name)
                if not posting or not any(posting.values()):
                    out[name] = None
                    continue
                out[name] = [len(posting.get(value_key(v), ())) for v in (want if isinstance(want, list) else [want])]
        return out

    def attributes_of(self, keyword_ids: Sequence[str]) -> list[dict]:
        """Each live keyword's attributes (a copy; {} for an id no longer live)."""
        with self._cond:
            labels = [self._label.get(kid) for kid in keyword_ids]
            return [dict(self._attrs.get(label, {})) if label is not None else {} for label in labels]

    def keywords(self) -> list[tuple[str, str, dict]]:
        """(id, text, attributes) of every live keyword, in label order (a copy: safe beside writes)."""
        with self._cond:
            return [(self._id[label], self._text[label], dict(self._attrs[label])) for label in sorted(self._id)]

    def allowed(self, flt: dict) -> set[int]:
        """Labels whose attributes match ``flt``; cached per filter until the next change.
        A new set (the caller may keep it); call under ``_cond``."""
        key = json.dumps(flt, sort_keys=True)
        hit = self._allowed_cache.get(key)
        if hit is not None:
            return hit
        result: Optional[set[int]] = None
        for name, want in flt.items():
            values = want if isinstance(want, list) else [want]
            posting = self._postings.get(name, {})
            matching = set().union(*(posting.get(value_key(v), ()) for v in values))
            result = matching if result is None else result & matching
            if not result:
                break
        result = result or set()
        if len(self._allowed_cache) >= 256:
            self._allowed_cache.clear()
        self._allowed_cache[key] = result
        return result
