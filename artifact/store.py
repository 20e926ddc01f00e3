"""The keyword store: ``id <TAB> text`` rows, row ``i`` is label ``i`` of the index."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

HEADER = ["id", "text"]


def read_store(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header != HEADER:
            raise ValueError(f"{path} does not start with the header 'id<TAB>text'.")
        for line in handle:
            row_id, _, text = line.rstrip("\n").partition("\t")
            ids.append(row_id)
            texts.append(text)
    return ids, texts


def write_store(path: Path, ids: Iterable[str], texts: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(HEADER) + "\n")
        for row_id, text in zip(ids, texts):
            handle.write(f"{row_id}\t{text}\n")
