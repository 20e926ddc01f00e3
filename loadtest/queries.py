"""Real queries to replay.

By default the ``query`` column of the MS MARCO and TREC Million Query files in the shared
data folder (``HLM_DATA_DIR``, default ``../shared/data`` beside the repository). Any TSV or
CSV with a header and a ``query`` column (or a plain one-query-per-line text file) works too.
The data files are read in place, never copied into the repository.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_FILES = ("msmarco_queries.tsv", "mq_topics.tsv")
_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    env = os.environ.get("HLM_DATA_DIR")
    return Path(env) if env else (_REPO_ROOT.parent / "shared" / "data")


def default_query_files() -> list[Path]:
    d = default_data_dir()
    return [d / name for name in DEFAULT_FILES]


def read_query_file(path: Path, column: str = "query") -> list[str]:
    """Read one file: TSV/CSV with a header naming ``column``, or one query per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path} (set HLM_DATA_DIR or pass a file)")
    with path.open(encoding="utf-8", newline="") as f:
        head = f.readline()
        f.seek(0)
        delim = "\t" if "\t" in head else ("," if path.suffix.lower() == ".csv" else None)
        if delim is None:  # plain text: every non-empty line is a query
            return [line.strip() for line in f if line.strip()]
        reader = csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no {column!r} column (header: {reader.fieldnames})")
        return [q.strip() for row in reader if (q := (row.get(column) or "")).strip()]


def load_queries(
    paths: Iterable[Path | str] | None = None, *, limit: int | None = None, seed: int = 0
) -> list[str]:
    """All queries from ``paths`` (default: the shared MS MARCO + MQ files), shuffled.

    Shuffling with a fixed seed mixes the two sources so every step sees the same blend of
    long web questions and short keyword-like topics, and repeated runs replay the same order.
    """
    files = [Path(p) for p in paths] if paths else default_query_files()
    out: list[str] = []
    for p in files:
        out.extend(read_query_file(p))
    if not out:
        raise ValueError(f"no queries found in {[str(p) for p in files]}")
    random.Random(seed).shuffle(out)
    return out[:limit] if limit else out


def cycle_take(queries: Sequence[str], n: int, start: int = 0) -> list[str]:
    """``n`` queries taken round-robin from ``start`` (so consecutive steps replay new ones)."""
    m = len(queries)
    return [queries[(start + i) % m] for i in range(n)]
