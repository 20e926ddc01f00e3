"""Reading keyword corpora, query files and relevance judgments from TSV/CSV.

Every reader normalises whitespace, drops empty rows and exact duplicates, keeps the
file's own ids, and returns a ``LoadReport`` saying what was dropped. A file that
cannot be used (missing column, bad encoding, zero usable rows) raises ``DataError``
with one sentence naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from artifact.text import normalise_text  # noqa: F401  (re-exported: the readers' one normalisation)

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# Fields can be long (product titles with specifications); the csv default is 128 KiB.
csv.field_size_limit(16 * 1024 * 1024)


class DataError(Exception):
    """A data file that cannot be used; the message names the file, line and problem."""


def data_dir() -> Path:
    """The sample data directory: ``HLM_DATA_DIR`` or ``../shared/data``."""
    return Path(os.environ.get("HLM_DATA_DIR") or DEFAULT_DATA_DIR)




@dataclass
class LoadReport:
    path: Path
    rows_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    dropped_duplicate_id: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.path.name}: {self.rows_read} rows read, {self.kept} kept, "
            f"{self.dropped_empty} empty, {self.dropped_duplicate} duplicate and "
            f"{self.dropped_duplicate_id} reused-id rows dropped"
        )


@dataclass
class TextTable:
    """Rows of (id, text), in file order, ids as strings."""

    ids: list[str]
    texts: list[str]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.texts)


def _open_rows(path: Path, delimiter: str | None):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    handle = open(path, encoding="utf-8", newline="")
    # QUOTE_NONE for TSV: real titles hold stray quote characters that are text, not quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    return handle, csv.reader(handle, delimiter=delimiter, quoting=quoting)


def _read(path: Path, columns: list[str], delimiter: str | None):
    """Yield (line_number, {column: value}) for the named columns; errors as DataError."""
    handle, reader = _open_rows(path, delimiter)
    with handle:
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}, line 1: the file is empty (a header row is required).")
            header = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(
                    f"{path}, line 1: missing column {missing[0]!r} (the header has {', '.join(map(repr, header))})."
                )
            positions = [header.index(c) for c in columns]
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    yield line, None
                    continue
                if len(row) <= max(positions):
                    raise DataError(f"{path}, line {line}: expected {len(header)} fields, found {len(row)}.")
                yield line, {c: row[p] for c, p in zip(columns, positions)}
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}, line {reader.line_num + 1}: not valid UTF-8 (byte {exc.object[exc.start]:#04x}); re-encode the file as UTF-8."
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: {exc}.") from None


def load_texts(
    path: Path | str,
    id_column: str = "id",
    text_column: str = "text",
    delimiter: str | None = None,
    limit: int | None = None,
) -> TextTable:
    """Load (id, text) rows; duplicates are rows whose normalised text was seen before."""
    path = Path(path)
    report = LoadReport(path)
    ids: list[str] = []
    texts: list[str] = []
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    for line, row in _read(path, [id_column, text_column], delimiter):
        report.rows_read += 1
        if row is None:
            report.dropped_empty += 1
            continue
        text = normalise_text(row[text_column])
        row_id = row[id_column].strip()
        if not text:
            report.dropped_empty += 1
            continue
        if not row_id:
            raise DataError(f"{path}, line {line}: empty {id_column!r}.")
        if text in seen_text:
            report.dropped_duplicate += 1
            continue
        if row_id in seen_id:
            # Real files reuse an id for a re-cased or edited text: keep the first row,
            # so an id always means one text, and report the rest.
            report.dropped_duplicate_id += 1
            continue
        seen_text.add(text)
        seen_id[row_id] = line
        ids.append(row_id)
        texts.append(text)
        if limit is not None and len(texts) >= limit:
            break
    report.kept = len(texts)
    if not texts:
        raise DataError(f"{path}: no usable rows (every row was empty or a duplicate).")
    return TextTable(ids, texts, report)


@dataclass
class Judgments:
    """Graded (query, keyword id, relevance) triples, grouped by normalised query."""

    by_query: dict[str, dict[str, float]]
    report: LoadReport

    @property
    def queries(self) -> list[str]:
        return list(self.by_query)


def load_judgments(
    path: Path | str,
    query_column: str = "query",
    id_column: str = "product_uid",
    relevance_column: str = "relevance",
    delimiter: str | None = None,
) -> Judgments:
    path = Path(path)
    report = LoadReport(path)
    by_query: dict[str, dict[str, float]] = {}
    for line, row in _read(path, [query_column, id_column, relevance_column], delimiter):
        report.rows_read += 1
        if row is None:
            report.dropped_empty += 1
            continue
        query = normalise_text(row[query_column])
        doc = row[id_column].strip()
        if not query or not doc:
            report.dropped_empty += 1
            continue
        try:
            relevance = float(row[relevance_column])
        except ValueError:
            raise DataError(
                f"{path}, line {line}: relevance {row[relevance_column]!r} is not a number."
            ) from None
        graded = by_query.setdefault(query, {})
        if doc in graded:
            report.dropped_duplicate += 1
            continue
        graded[doc] = relevance
        report.kept += 1
    if not by_query:
        raise DataError(f"{path}: no usable rows (every row was empty).")
    return Judgments(by_query, report)


# The sample data, by role. Column names are those of ../shared/data.
SAMPLE_FILES = {
    "products": ("homedepot_products.tsv", "product_uid", "title"),
    "topics": ("mq_topics.tsv", "topic_id", "query"),
    "msmarco": ("msmarco_queries.tsv", "query_id", "query"),
}


def load_sample(name: str, limit: int | None = None, directory: Path | None = None) -> TextTable:
    filename, id_column, text_column = SAMPLE_FILES[name]
    return load_texts((directory or data_dir()) / filename, id_column, text_column, limit=limit)


def load_sample_judgments(directory: Path | None = None) -> Judgments:
    return load_judgments((directory or data_dir()) / "homedepot_judgments.tsv")
