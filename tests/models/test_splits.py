"""Deterministic query splits."""

from models.splits import split_of


def test_split_is_deterministic_and_near_the_share():
    queries = [f"query {i}" for i in range(5000)]
    parts = {"train": [q for q in queries if split_of(q) == "train"], "dev": [q for q in queries if split_of(q) == "dev"]}
    assert [split_of(q) for q in queries] == [split_of(q) for q in queries]
    assert 0.17 < len(parts["dev"]) / len(queries) < 0.23
    assert not set(parts["dev"]) & set(parts["train"])
    assert split_of("cordless drill") == split_of("cordless drill")
