"""BM25 over the keyword texts, beside the dense index: the lexical signal a search may fuse in.

Why (issue #27, measured by scripts/lexical_fusion.py): on judged Home Depot dev queries,
BM25 over the product titles ranks about as well as the static student alone, and the two
disagree in useful ways: reciprocal rank fusion of their top lists lifted dev nDCG@10 by ~9 %
on the demo artifact. So an artifact carries a BM25 index of its keywords (``bm25s``: a sparse
matrix, numpy only), and a search may ask for ``"fusion": "rrf"``.

What it covers: the artifact's keywords, as built (row ``i`` = store row ``i``). Keywords
added live are found by the dense side only, and a live change of a keyword's text is not
seen here until the next build; a deleted keyword is dropped from the fused answer (the
caller checks each id against the live index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

STOPWORDS = "en"
RRF_K = 60  # the usual constant of reciprocal rank fusion: 1 / (60 + rank)


def _tokenize(texts: Sequence[str]):
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False)


def build_lexical(texts: Sequence[str], folder: Path) -> dict:
    """Index ``texts`` (row order) into ``folder``; the manifest's ``lexical`` fields."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_tokenize(texts), show_progress=False)
    retriever.save(str(folder), show_progress=False)
    return {"library": "bm25s", "stopwords": STOPWORDS, "rows": len(texts)}


class LexicalIndex:
    """The artifact's BM25 index, loaded memory-mapped."""

    def __init__(self, folder: Path, ids: Sequence[str]):
        """``ids``: the keyword store's ids, row order (what a row found here is)."""
        import bm25s

        self.bm25 = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        if self.bm25.scores["num_docs"] != len(ids):
            raise ValueError(f"the BM25 index holds {self.bm25.scores['num_docs']} keywords, the store {len(ids)}")
        self.ids = list(ids)
        self.rows = len(ids)

    def search(self, texts: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """(store row, BM25 score) of the best ``k`` per text, best first; only rows that share
        a word with it (a text of stop words and unknown words finds none)."""
        tokens = _tokenize(texts)
        if not any(tokens.ids):
            return [[] for _ in texts]
        rows, scores = self.bm25.retrieve(tokens, k=min(k, self.rows), show_progress=False, n_threads=1)
        return [[(int(r), float(s)) for r, s in zip(row, score) if s > 0] for row, score in zip(rows, scores)]


def rrf(*rankings: Sequence[str], k: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of ranked id lists: (id, fused score) of the best ``k``."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            fused[item] = fused.get(item, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda pair: -pair[1])[:k]
