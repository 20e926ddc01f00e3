"""The live changes in memory: what the snapshot holds and the log adds to.

Changes are kept relative to no particular artifact: an upsert sets an id, a delete removes
it. Replaying them onto any artifact (the one served at start-up, a new one after a swap,
the one ``hlm compact`` folded them into) is therefore idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from service.live.wal import Change


@dataclass
class Entry:
    text: str
    attributes: dict
    vector: np.ndarray  # float32 [dim], in the space of ``LiveSet.teacher``


@dataclass
class LiveSet:
    teacher: Optional[str] = None  # sha256 of the teacher ONNX the vectors come from
    sequence: int = 0  # of the last change applied
    upserts: dict[str, Entry] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)

    def apply(self, change: Change, vectors: Optional[np.ndarray] = None) -> None:
        """``vectors``: the change's vectors in this set's space when its own are not (re-encoded)."""
        vectors = change.vectors if vectors is None else vectors
        for kid in change.delete_ids:
            self.upserts.pop(kid, None)
            self.deletes.add(kid)
        for i, kid in enumerate(change.upsert_ids):
            self.deletes.discard(kid)
            self.upserts[kid] = Entry(change.texts[i], dict(change.attributes[i]), np.asarray(vectors[i], dtype=np.float32))
        self.sequence = max(self.sequence, change.sequence)

    def as_change(self) -> Change:
        """Everything this set holds as one change (deletes and upserts never share an id)."""
        ids = list(self.upserts)
        vectors = np.stack([self.upserts[k].vector for k in ids]) if ids else None
        return Change(sequence=self.sequence, teacher=self.teacher or "", upsert_ids=ids,
                      texts=[self.upserts[k].text for k in ids], attributes=[self.upserts[k].attributes for k in ids],
                      vectors=vectors, delete_ids=sorted(self.deletes))
