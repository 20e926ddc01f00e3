import pytest

from loadtest.queries import cycle_take, default_data_dir, load_queries, read_query_file
from loadtest.targets import TargetError, check_target


def test_only_loopback_unless_allowed():
    assert check_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_target("http://localhost:9") == "http://localhost:9"
    assert check_target("http://[::1]:8000") == "http://[::1]:8000"
    assert check_target("http://127.0.0.5:80")
    for url in ("http://10.0.0.5:8000", "http://example.com", "http://192.168.1.2"):
        with pytest.raises(TargetError):
            check_target(url)
    assert check_target("http://example.com:8000", allow_remote=True) == "http://example.com:8000"
    with pytest.raises(TargetError):
        check_target("ftp://127.0.0.1")


def test_default_queries_come_from_the_shared_data(monkeypatch):
    d = default_data_dir()
    if not (d / "msmarco_queries.tsv").is_file():
        pytest.skip(f"shared data not in {d}")
    msmarco = read_query_file(d / "msmarco_queries.tsv")
    mq = read_query_file(d / "mq_topics.tsv")
    assert "what is paula deen's brother" in msmarco
    assert "after school program evaluation" in mq
    qs = load_queries()
    assert len(qs) == len(msmarco) + len(mq)
    assert qs[:5] == load_queries()[:5]  # seeded shuffle: same order every run


def test_data_dir_env_and_user_files(tmp_path, monkeypatch):
    (tmp_path / "msmarco_queries.tsv").write_text("query_id\tquery\n1\tcordless drill\n2\t  \n")
    (tmp_path / "mq_topics.tsv").write_text("topic_id\tquery\n7\tgarden hose\n")
    monkeypatch.setenv("HLM_DATA_DIR", str(tmp_path))
    assert sorted(load_queries()) == ["cordless drill", "garden hose"]
    csv = tmp_path / "mine.csv"
    csv.write_text('id,query\n1,"drill, cordless"\n')
    assert load_queries([csv]) == ["drill, cordless"]
    txt = tmp_path / "plain.txt"
    txt.write_text("one\n\ntwo\n")
    assert sorted(load_queries([txt])) == ["one", "two"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="query"):
        load_queries([bad])
    with pytest.raises(FileNotFoundError):
        load_queries([tmp_path / "missing.tsv"])


def test_cycle_take():
    assert cycle_take(["a", "b", "c"], 5, start=2) == ["c", "a", "b", "c", "a"]
