"""Deterministic query splits."""

from models.splits import partition, split_of


def test_split_is_deterministic_and_near_the_share():
    queries = [f"query {i}" for i in range(5000)]
    parts = partition(queries)
    assert partition(queries) == parts
    assert 0.17 < len(parts["dev"]) / len(queries) < 0.23
    assert not set(parts["dev"]) & set(parts["train"])
    assert split_of("cordless drill") == split_of("cordless drill")
