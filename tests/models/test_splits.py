"""Deterministic query splits: a query's side is a function of its text alone, the same in
every process and on every machine, and pinned (moving the split would move queries from
dev into training behind every recorded result and cached checkpoint)."""

import os
import subprocess
import sys

from models.splits import split_of

# Pinned when the split was made (sha256 of salt + text): any change of salt, hash, share or
# bucket arithmetic moves some of these.
PINNED = {
    "cordless drill": "train", "paint roller": "train", "ceiling fan": "train", "garden hose": "train",
    "wood screws": "train", "outdoor led flood light": "dev", "2x4 lumber 8 ft": "dev", "grout": "dev",
    "query 5": "dev", "query 7": "dev", "query 8": "dev", "query 16": "dev", "query 0": "train",
    "query 6": "train", "query 9": "train", "query 12": "train",
}


def test_split_is_near_the_share_and_disjoint():
    queries = [f"query {i}" for i in range(5000)]
    parts = {"train": [q for q in queries if split_of(q) == "train"], "dev": [q for q in queries if split_of(q) == "dev"]}
    assert 0.17 < len(parts["dev"]) / len(queries) < 0.23
    assert not set(parts["dev"]) & set(parts["train"])
    assert len(parts["dev"]) + len(parts["train"]) == len(queries)


def test_split_is_pinned():
    assert {q: split_of(q) for q in PINNED} == PINNED


def test_split_is_the_same_in_another_process_with_another_hash_seed():
    """Python's own hash() of a str changes with PYTHONHASHSEED: a split built on it would
    put a query on different sides in the build and in the test process."""
    queries = [f"query {i}" for i in range(300)] + list(PINNED)
    here = "".join("d" if split_of(q) == "dev" else "t" for q in queries)
    code = ("import sys; from models.splits import split_of; "
            "print(''.join('d' if split_of(q) == 'dev' else 't' for q in sys.stdin.read().split('\\n')))")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        there = subprocess.run([sys.executable, "-c", code], input="\n".join(queries), capture_output=True, text=True,
                               env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), check=True)
        assert there.stdout.strip() == here
