"""The two seams of the online path: what encodes a query and what searches the keywords.

A new runtime (a GPU encoder, a static token table) or a new index backend (Milvus) is
one class that satisfies one of these protocols; nothing else in the service changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

# Every index holds L2-normalised vectors and ranks by inner product, so a score is the
# cosine similarity; written once here and nowhere else.
SPACE = "ip"


@dataclass
class Encoded:
    vectors: np.ndarray  # float32 [n, dim], L2-normalised
    truncated: list[bool]  # the text was longer than the model's token limit
    tokens: int  # tokens in the padded batch (batch * longest)


@runtime_checkable
class Encoder(Protocol):
    dim: int
    provider: str
    max_length: int
    # True when a text's vector does not depend on the other texts of its batch (fp32
    # graphs, static quantisation, token tables); False for dynamic int8, whose activation
    # scales are computed over the whole batch: such a model runs one text at a time.
    batch_invariant: bool

    def encode(self, texts: Sequence[str]) -> Encoded: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...


@dataclass(frozen=True)
class SearchParams:
    k: int
    ef: Optional[int] = None  # None: the index's default
    filter: Optional[dict] = None  # attribute -> value or list of values (any of)


class Hit(NamedTuple):
    """One keyword found. A named tuple, not a dataclass: a search makes k of them per query
    on the event loop, and a frozen dataclass costs ~5x more to build (issue #29's profile)."""

    id: str
    text: str
    score: float


class IndexUnavailable(Exception):
    """A remote index (Milvus) cannot answer now; the message is one sentence.

    Temporary by nature: the service answers 503 with ``Retry-After`` and reports not
    ready until the backend answers again, instead of a 500 or a restart.
    """


@runtime_checkable
class VectorIndex(Protocol):
    """Keyword vectors by id, searched by inner product.

    The read side is what every backend serves; the write side (``upsert``/``delete``,
    one writer at a time) is what live keyword updates need. A backend that cannot write
    raises ``NotImplementedError`` there.
    """

    dim: int
    backend: str  # "hnswlib" or "milvus": the label of the index-time metric

    def __len__(self) -> int: ...

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        """The best hits per query row, best first (at most k each; fewer only when fewer match)."""
        ...

    def verify(self) -> None:
        """Raise ValueError with one sentence if the loaded index is inconsistent."""
        ...

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str],
               attributes: Sequence[dict]) -> None: ...

    def delete(self, ids: Sequence[str]) -> int: ...
