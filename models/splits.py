"""Deterministic train/dev split of judged queries, by a hash of the query text.

A query's split depends only on its normalised text, so it never changes between runs,
machines or profiles, and the same query can never sit on both sides. Nothing in the dev
split is ever used for training (tests/models/test_splits.py checks the trainers' inputs).
"""

from __future__ import annotations

import hashlib

DEV_SHARE = 0.2  # one query in five is dev
SPLIT_SALT = "hlm-split-v1"


def split_of(query: str) -> str:
    digest = hashlib.sha256(f"{SPLIT_SALT}\0{query}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "dev" if bucket < DEV_SHARE else "train"
