"""`hlm query` against the real service on loopback and straight from the artifact folder.

Both sources must print the same keywords as the service's /v1/search answers for the
same query, side by side, with the same overlap@k.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent / "service"))

from http_helpers import start_server  # noqa: E402,F401 - a fixture

from hlm.cli import app  # noqa: E402

pytestmark = pytest.mark.timeout(300)

QUERY, K = "cordless drill", 5


@pytest.fixture(scope="module")
def server(start_server):
    srv = start_server(shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    return srv


@pytest.fixture(scope="module")
def api(server) -> dict[str, list[str]]:
    """The keyword ids the service answers, by encoder: what both sources must show."""
    out = {}
    for encoder in ("student", "teacher"):
        response = server.client.post("/v1/search", json={"query": QUERY, "k": K, "encoder": encoder})
        assert response.status_code == 200, response.text
        out[encoder] = [h["id"] for h in response.json()["results"][0]["keywords"]]
    return out


def invoke(*args: str):
    # A wide terminal, so keyword texts are not folded into several lines.
    return CliRunner().invoke(app, ["query", *args], env={"COLUMNS": "200"})


def check_table(output: str, api: dict[str, list[str]]) -> None:
    assert "student (int8)" in output and "teacher (fp32)" in output
    # Cells of each row line: "" | # | student | score | teacher | score | "".
    columns: dict[int, list[str]] = {2: [], 4: []}
    for line in output.splitlines():
        cells = line.split("│")
        if len(cells) == 7:
            for i in columns:
                columns[i] += re.findall(r"\b[a-z]+:\d+\b", cells[i])
    assert {"student": columns[2], "teacher": columns[4]} == api, output
    shared = len(set(api["student"]) & set(api["teacher"]))
    assert f"overlap@{K}: {shared} of {K} shared" in output
    assert output.count("●") >= 2 * shared


def test_against_the_running_service(server, api):
    result = invoke(QUERY, "--url", server.url, "--k", str(K))
    assert result.exit_code == 0, result.output
    check_table(result.output, api)
    assert "student: server" in result.output and "teacher: server" in result.output


def test_straight_from_the_artifact_folder(small_artifact, api):
    result = invoke(QUERY, "--artifact", str(small_artifact), "--k", str(K))
    assert result.exit_code == 0, result.output
    check_table(result.output, api)
    assert f"artifact {small_artifact}" in result.output


def test_one_encoder_only(server, api):
    result = invoke(QUERY, "--url", server.url, "--k", str(K), "--encoder", "teacher")
    assert result.exit_code == 0, result.output
    assert "teacher (fp32)" in result.output and "student (" not in result.output
    assert all(kid in result.output for kid in api["teacher"])
    assert "overlap@" not in result.output


def test_a_refused_request_shows_the_services_message(server):
    result = invoke(QUERY, "--url", server.url, "--k", "100000")
    assert result.exit_code == 1
    assert "no answer: Invalid request: k: k must be between 1 and" in result.output


@pytest.mark.parametrize("args, words", [
    (["   ", "--url", "http://127.0.0.1:9"], "the query is empty"),
    ([QUERY, "--url", "http://127.0.0.1:9"], "cannot reach the service at http://127.0.0.1:9"),
    ([QUERY, "--url", "http://127.0.0.1:9", "--artifact", "."], "not both"),
    ([QUERY, "--encoder", "mpnet"], "--encoder must be student, teacher or both"),
    ([QUERY, "--filter", "{source"], "--filter is not valid JSON"),
    ([QUERY, "--artifact", "/nonexistent/artifact"], "/nonexistent/artifact"),
])
def test_mistakes_get_one_sentence_and_status_2(args, words):
    result = CliRunner().invoke(app, ["query", *args])
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output
