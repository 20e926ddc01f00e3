"""Student vs teacher end to end against a real loopback service, with tiny steps.

The fake service answers the student in 2 ms and the teacher in 20 ms, one request at a
time each, so the teacher cannot serve more than 50 requests/s: at 80/s offered it must
fail whatever the machine's load. Everything else is checked for structure, not speed.
"""

import json

from loadtest.compare import compare
from loadtest.report import run_order


def test_compare_writes_a_complete_run_folder(quick_service, tmp_path):
    folder = compare(quick_service, runs_root=tmp_path, duration_s=0.7, warmup_s=0.2, start_rps=20,
                     max_rps=80, refine=0, progress=None, query_files=None)
    assert folder.parent == tmp_path and folder.name.startswith("loadtest-")
    for name in ("results.json", "report.md", "latency_vs_load.png", "latency_hist.png", "progress.log"):
        assert (folder / name).is_file(), name
    for png in ("latency_vs_load.png", "latency_hist.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((folder / "results.json").read_text())  # strict JSON: no NaN/Infinity
    meta, summary = doc["meta"], doc["summary"]
    assert meta["slos_ms"] == [15.0, 100.0]
    assert meta["cpus"]["note"]
    enc = {e["encoder"]: e for e in doc["encoders"]}
    assert set(enc) == {"student", "teacher"}

    # steps alternate: round 0 student then teacher, round 1 teacher then student, ...; an
    # encoder whose search is over drops out. The whole order follows from the step counts.
    steps = sorted(((seq, e["encoder"]) for e in doc["encoders"] for seq in e["seq"]))
    order = [name for _, name in steps]
    counts = {name: len(enc[name]["steps"]) for name in ("student", "teacher")}
    expected, taken, round_no = [], dict.fromkeys(counts, 0), 0
    while any(taken[n] < counts[n] for n in counts):
        for name in (["student", "teacher"] if round_no % 2 == 0 else ["teacher", "student"]):
            if taken[name] < counts[name]:
                expected.append(name)
                taken[name] += 1
        round_no += 1
    assert counts["student"] >= 1 and counts["teacher"] >= 1
    assert order == expected

    # the teacher (one request at a time, 20 ms each: 50/s at most) cannot sustain 80/s at any
    # SLO: its search ends at a step it failed (at 80/s, or lower on a slower machine), so
    # its capacity is measured, never capped at the sweep's top.
    teacher_80 = [s for s in enc["teacher"]["steps"] if s["offered_rps"] == 80.0]
    assert all(s["achieved_rps"] < 0.95 * 80 for s in teacher_80)
    for slo in ("15", "100"):
        best = enc["teacher"]["max_rps"][slo]
        assert best is None or best < 80
        assert enc["teacher"]["capped"][slo] is False
        assert any(not v[slo]["sustained"] for v in enc["teacher"]["verdicts"])

    # the server's histogram counted exactly the measured requests (warm-up drained first)
    for e in doc["encoders"]:
        for s in e["steps"]:
            assert s["server"] is not None, s["server_note"]
            http_errors = sum(v for k, v in s["errors"].items() if k.isdigit())
            assert s["server"]["requests"] == s["ok"] + http_errors
            assert s["latency"]["count"] == s["ok"]

    assert "student/teacher" in summary["ratios"]
    md = (folder / "report.md").read_text()
    assert "## Ratios" in md and "## Steps in run order" in md
    assert "server p99" in md and ("generator pinned" in md or "not pinned" in md)
    assert md.count("| student |") + md.count("| teacher |") >= len(order)


def test_run_order_follows_seq():
    from loadtest.sweep import EncoderSweep

    a, b = EncoderSweep("a"), EncoderSweep("b")
    a.seq, b.seq = [0, 3], [1, 2]
    a.steps, b.steps = [None, None], [None, None]
    assert [(sw.encoder, j) for sw, j in run_order([a, b])] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]


def test_variants_that_need_their_own_server(tmp_path):
    """E.g. student int8 vs fp32, which the service picks at start-up: one server per env."""
    import sys

    cmd = [sys.executable, "-m", "tests.loadtest.fake_service", "--port", "{port}", "--delay", "student=0.002"]
    folder = compare(
        None, server_cmd=cmd, runs_root=tmp_path, duration_s=0.5, warmup_s=0, start_rps=20, max_rps=20,
        refine=0, progress=None,
        encoders=['fast={"encoder":"student","@env":{"FAKE_DELAY_SCALE":"1"}}',
                  'slow={"encoder":"student","@env":{"FAKE_DELAY_SCALE":"10"}}'],
    )
    doc = json.loads((folder / "results.json").read_text())
    urls = {e["label"]: e["url"] for e in doc["meta"]["encoders"]}
    assert urls["fast"] != urls["slow"]
    assert (folder / "server.log").is_file() and (folder / "server-1.log").is_file()
    enc = {e["encoder"]: e for e in doc["encoders"]}
    fast, slow = enc["fast"]["steps"][0], enc["slow"]["steps"][0]
    assert fast["server"]["ok_requests"] == fast["ok"] and slow["server"]["ok_requests"] == slow["ok"]
    assert slow["server"]["mean"] >= 19 and slow["server"]["mean"] > fast["server"]["mean"]  # 20 ms vs 2 ms
    assert "fast/slow" in doc["summary"]["ratios"]
