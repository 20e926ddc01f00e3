"""Loading keyword and query files: good files, each malformed case, unicode, long rows."""

from pathlib import Path

import pytest

from models.data import DataError, load_judgments, load_sample, load_texts, normalise_text


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_normalise_text_collapses_whitespace_and_controls():
    assert normalise_text("  cordless\t\tdrill \n 18v\x00 ") == "cordless drill 18v"
    assert normalise_text("cafe\u0301") == "caf\u00e9"  # NFC


def test_good_tsv_keeps_ids_and_reports_drops(tmp_path):
    path = write(tmp_path, "k.tsv", "id\ttext\n1\tdrill\n2\t  \n3\tdrill\n4\tsaw  blade\n1\tother\n")
    table = load_texts(path)
    assert table.ids == ["1", "4"]
    assert table.texts == ["drill", "saw blade"]
    r = table.report
    assert (r.rows_read, r.kept, r.dropped_empty, r.dropped_duplicate, r.dropped_duplicate_id) == (5, 2, 1, 1, 1)
    assert "2 kept" in r.summary()


def test_csv_with_named_columns_and_quotes(tmp_path):
    path = write(tmp_path, "k.csv", 'sku,title,price\n"a1","Drill, 18V ""Pro""",9\nb2,Hammer,3\n')
    table = load_texts(path, id_column="sku", text_column="title")
    assert table.texts == ['Drill, 18V "Pro"', "Hammer"]


def test_unicode_and_very_long_rows(tmp_path):
    long_text = "x" * 200_000
    path = write(tmp_path, "k.tsv", f"id\ttext\n1\t日本語 ✓ émoji 🔧\n2\t{long_text}\n3\tمرحبا\n")
    table = load_texts(path)
    assert table.texts[0] == "日本語 ✓ émoji 🔧"
    assert len(table.texts[1]) == 200_000
    assert table.texts[2] == "مرحبا"


def test_missing_column_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "k.tsv", "id\ttitle\n1\tdrill\n")
    with pytest.raises(DataError, match=r"k\.tsv, line 1: missing column 'text'"):
        load_texts(path)


def test_bad_encoding_names_the_line(tmp_path):
    path = write(tmp_path, "k.tsv", b"id\ttext\n1\tdrill\n2\tcaf\xe9\n")
    with pytest.raises(DataError, match=r"k\.tsv, line \d+: not valid UTF-8"):
        load_texts(path)


def test_zero_usable_rows(tmp_path):
    path = write(tmp_path, "k.tsv", "id\ttext\n1\t \n2\t\t\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_texts(path)


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="line 1: the file is empty"):
        load_texts(write(tmp_path, "e.tsv", ""))
    with pytest.raises(DataError, match="no such file"):
        load_texts(tmp_path / "absent.tsv")


def test_short_row_is_reported(tmp_path):
    path = write(tmp_path, "k.tsv", "id\tx\ttext\n1\ta\tdrill\n2\tb\n")
    with pytest.raises(DataError, match=r"line 3: expected 3 fields, found 2"):
        load_texts(path)


def test_judgments_bad_relevance(tmp_path):
    path = write(tmp_path, "j.tsv", "query\tproduct_uid\trelevance\nq\t1\t2.5\nq\t2\thigh\n")
    with pytest.raises(DataError, match=r"line 3: relevance 'high' is not a number"):
        load_judgments(path)


def test_sample_data_loads(data_dir):
    products = load_sample("products", directory=data_dir)
    assert len(products) > 50_000
    assert len(set(products.ids)) == len(products)
    msmarco = load_sample("msmarco", directory=data_dir)
    assert msmarco.report.dropped_duplicate_id > 0  # the real file reuses some ids


def test_training_texts_and_served_queries_get_one_normalisation(tmp_path):
    """A query typed by a user reaches the tokenizer as the same string the data loader
    gives the same words in a training file (one function, artifact/text.py)."""
    from service.protocol import SearchRequest
    from service.settings import Settings

    raw = "  Cordless\u200b  drill\t18v\x00 cafe\u0301 "
    path = tmp_path / "q.tsv"
    path.write_text("id\tquery\n1\t" + raw.replace("\t", " ") + "\n", encoding="utf-8")
    loaded = load_texts(path, id_column="id", text_column="query").texts[0]
    served = SearchRequest.model_validate({"query": raw.replace("\t", " ")}, context={"settings": Settings()}).texts[0]
    assert loaded == served == normalise_text(raw) == "Cordless drill 18v caf\u00e9"
