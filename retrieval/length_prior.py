"""A length prior on the dense hits: ``score + weight * ln(words)``, re-ranking a search's candidates.

Why (issue #26, item 10; measured by ``scripts/length_bias.py --priors``): over the full
index, where short web topics ("iphone", "paris") sit among long product titles, the static
student's top-1 was at most half the words of the teacher's for 17.8 % of web dev queries
(9.8 % the other way round), and on judged product queries short topics pushed judged titles
out of the top 10. A small bonus for longer keywords, applied to the candidates the index
already returns (its ef list), removes the asymmetry at weight 0.02 and lifts judged dev
nDCG@10 over the whole keyword set; the figures are in docs/RESULTS.md.

Words are counted as whitespace-separated tokens of the keyword's text (at least 1).
"""

from __future__ import annotations

import math
from typing import Sequence

# The largest weight a request or HLM_LENGTH_PRIOR may set: ln(40 words) * 0.2 = 0.74, past
# which the prior outweighs any cosine.
MAX_WEIGHT = 0.2


def rerank(hits: Sequence[dict], weight: float, k: int) -> list[dict]:
    """The best ``k`` of ``hits`` (dicts with "text" and "score") by score + weight * ln(words); each hit's
    score becomes that sum, so the answer stays ordered by its scores. (Only the k kept are
    copied: this runs on the event loop for every search that asks for a prior.)"""
    log = math.log
    boosted = sorted(((-(hit["score"] + weight * log(max(1, len(hit["text"].split())))), i)
                      for i, hit in enumerate(hits)))
    return [dict(hits[i], score=-negative) for negative, i in boosted[:k]]
