"""Head-query result cache: (normalised query, k, ef, encoder, filter) -> one query's results.

Sponsored-search traffic is Zipfian, so a small LRU answers the head without the encoder.
Bounded in bytes (an estimate of what the entries hold, ``HLM_RESULT_CACHE_BYTES``; 0 = off).

Invalidation is by generation, not by timing: the generation is (the runtime served, the live
keyword version). A look-up under another generation than the cache's empties the cache
first, so after an artifact swap or an acknowledged keyword change no old answer is given.
An answer computed under generation g is stored only if the generation is still g when it
comes back, so a search that raced a change can never refill the cache with stale results.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any, Hashable, Optional

# Per-entry bookkeeping (OrderedDict node, key tuple, the result's list and dicts).
_ENTRY_OVERHEAD = 400
_HIT_OVERHEAD = 250


def estimate_bytes(key: tuple, value: Any) -> int:
    truncated, keywords = value
    size = _ENTRY_OVERHEAD + sum(sys.getsizeof(part) for part in key if isinstance(part, str))
    for hit in keywords:
        size += _HIT_OVERHEAD + len(hit["id"]) + len(hit["text"].encode("utf-8", "surrogatepass"))
    return size


class ResultCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[tuple, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._generation: Optional[Hashable] = None
        self._lock = threading.Lock()  # looked up on the loop; cleared from wherever the generation moves

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _sync(self, generation: Hashable) -> None:
        if generation != self._generation:
            self._entries.clear()
            self._bytes = 0
            self._generation = generation

    def get(self, generation: Hashable, key: tuple) -> Optional[Any]:
        with self._lock:
            self._sync(generation)
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, generation: Hashable, key: tuple, value: Any) -> None:
        """Store ``value`` computed under ``generation``; dropped if the generation moved since."""
        size = estimate_bytes(key, value)
        if size > self.max_bytes:
            return
        with self._lock:
            if generation != self._generation:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._generation = None
