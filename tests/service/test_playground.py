"""The playground at / in a real browser (Debian's Chromium, driven by Playwright), /v1/stats.

Everything runs against the real service on loopback: the page's figures are compared with
what the API itself answers for the same query. Playwright's own browser download is not
reachable from these machines; scripts/test.sh installs Debian's `chromium` instead, and a
missing browser fails the run rather than skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from http_helpers import REPO, error_of

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path(os.environ.get("HLM_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "playground-test-token-51c2"
SCREENSHOT = REPO / "docs" / "playground.png"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (scripts/test.sh does it as root), "
                    "the browser tests need it")
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors
    yield pg
    context.close()
    assert not errors, errors  # no script error on any page


@pytest.fixture(scope="module")
def guarded_server(start_server):
    """A fresh server with an admin token: /v1/info and /v1/stats need it."""
    srv = start_server(admin_token=TOKEN, shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    return srv


def api_ids(server, query: str, k: int, encoder: str) -> list[str]:
    response = server.client.post("/v1/search", json={"query": query, "k": k, "encoder": encoder})
    assert response.status_code == 200, response.text
    return [h["id"] for h in response.json()["results"][0]["keywords"]]


# The page's policy forbids eval, so waits poll from here (expect) instead of page.wait_for_function.


def search_in_page(pg, query: str) -> None:
    """Keyboard only: the query box has the focus on load, Enter submits."""
    expect(pg.locator("#query")).to_be_focused()
    pg.keyboard.type(query)
    pg.keyboard.press("Enter")


def wait_columns(pg) -> None:
    for name in ("student", "teacher"):
        expect(pg.locator(f"#r-{name}")).to_have_attribute("data-count", re.compile(r"^\d+$"))


# ---- without a browser ----


def test_the_page_and_its_files_come_from_the_service_itself(server):
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # No CDN: every script and stylesheet is one of the service's own files.
    assert not re.search(r"""(src|href)=["']https?://""", page.text)
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = server.client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.content == (REPO / "service" / "static" / name).read_bytes()
    missing = server.client.get("/static/manifest.json")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    assert server.client.get("/static/..%2Fmain.py").status_code == 404


def test_stats_counts_move_with_requests(guarded_server):
    srv = guarded_server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert srv.client.get("/v1/stats").status_code == 401
    before = srv.client.get("/v1/stats", headers=auth).json()
    for query in ("paint", "wood screws", "garden hose"):
        assert srv.client.post("/v1/search", json={"query": query, "k": 3}).status_code == 200
    for query in ("paint", "led light bulbs"):
        assert srv.client.post("/v1/search", json={"query": query, "encoder": "teacher"}).status_code == 200
    assert srv.client.post("/v1/embeddings", json={"input": ["a", "b"], "model": "student"}).status_code == 200
    after = srv.client.get("/v1/stats", headers=auth).json()
    b, a = before["encoders"], after["encoders"]
    assert a["student"]["served"] - b["student"]["served"] == 4  # 3 searches + 1 embeddings request
    assert a["teacher"]["served"] - b["teacher"]["served"] == 2
    assert a["student"]["p50_ms"] is not None and a["teacher"]["p99_ms"] is not None
    assert after["status"] == "ready" and after["window_s"] >= before["window_s"]


# ---- in the browser ----


@pytest.mark.slow
def test_both_columns_fill_and_the_overlap_is_the_apis(server, page, tmp_path):
    query, k = "cordless drill", 10
    page.goto(f"{server.url}/")
    search_in_page(page, query)
    wait_columns(page)
    page.wait_for_selector("#overlap:not([hidden])")
    page.wait_for_selector("#info:not([hidden])")
    page.wait_for_selector("#stats-table:not([hidden])")

    student, teacher = api_ids(server, query, k, "student"), api_ids(server, query, k, "teacher")
    shown = {name: page.eval_on_selector_all(f"#r-{name} li.hit", "els => els.map(e => e.dataset.id)")
             for name in ("student", "teacher")}
    assert shown == {"student": student, "teacher": teacher}
    shared = set(student) & set(teacher)
    overlap = page.locator("#overlap")
    assert int(overlap.get_attribute("data-shared")) == len(shared)
    assert int(overlap.get_attribute("data-k")) == len(teacher) == k
    assert f"overlap@{k}: {len(shared)} of {k}" in overlap.inner_text()
    for name in ("student", "teacher"):
        marked = page.eval_on_selector_all(f"#r-{name} li.shared", "els => els.map(e => e.dataset.id)")
        assert set(marked) == shared
        assert re.search(r"server \d+\.\d+ ms \(queue", page.inner_text(f"#t-{name}"))
    assert page.inner_text("#p-student") == "(int8)" and page.inner_text("#p-teacher") == "(fp32)"

    # The gate verdict as the manifest records it, and the live table counted the searches.
    gate = server.client.get("/v1/info").json()["gate"]
    assert page.get_attribute("#gate", "data-passed") == str(gate["passed"]).lower()
    assert ("fails" if not gate["passed"] else "passes") in page.inner_text("#gate")
    expect(page.locator("#stats-body tr[data-encoder=teacher] [data-field=served]")).to_have_text(re.compile(r"^[1-9]\d*$"))
    text = page.inner_text("body")
    assert "Traceback" not in text

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The README's copy: written when missing (or asked for), so a test run does not dirty the tree.
    if not SCREENSHOT.exists() or os.environ.get("HLM_UPDATE_SCREENSHOT") == "1":
        # k = 5 so the live figures and the gate fit in the picture with the two columns.
        page.set_viewport_size({"width": 1100, "height": 820})
        page.fill("#k", "5")
        page.press("#k", "Enter")
        expect(page.locator("#r-teacher li.hit")).to_have_count(5)
        expect(page.locator("#r-student li.hit")).to_have_count(5)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": 1340})
        # A palette of 128 colours keeps the text sharp at a third of the size, for the repository.
        from PIL import Image

        with Image.open(SCREENSHOT) as shot_image:
            small = shot_image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT,
                                                       dither=Image.Dither.NONE)
        small.save(SCREENSHOT, optimize=True)
        shutil.copy(SCREENSHOT, tmp_path / "readme-copy.png")


@pytest.mark.slow
@pytest.mark.parametrize("typed", ["", "   "], ids=["empty", "spaces"])
def test_an_empty_query_says_so_and_sends_nothing(server, page, typed):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/search" in r.url else None)
    page.goto(f"{server.url}/")
    search_in_page(page, typed)
    page.wait_for_selector("#message:not([hidden])")
    assert "the query box is empty" in page.inner_text("#message")
    assert page.eval_on_selector("#query", "e => e === document.activeElement")
    assert page.locator("#r-student li").count() == 0 and page.locator("#r-teacher li").count() == 0
    assert requests == []


@pytest.mark.slow
def test_a_server_refusal_shows_its_message_not_a_trace(server, page):
    max_k = server.client.get("/v1/info").json()["limits"]["max_k"]
    expected = error_of(server.client.post("/v1/search", json={"query": "paint", "k": max_k + 1}))["message"]
    page.goto(f"{server.url}/")
    page.fill("#k", str(max_k + 1))
    page.fill("#query", "paint")
    page.press("#k", "Enter")  # Enter in any field submits
    page.wait_for_selector("#e-teacher:not([hidden])")
    assert page.inner_text("#e-student") == expected == page.inner_text("#e-teacher")
    assert page.inner_text("#message") == expected
    assert page.locator("#overlap").is_hidden()
    assert "Traceback" not in page.content()


@pytest.mark.slow
def test_the_filter_field_sends_a_json_object(server, page):
    page.goto(f"{server.url}/")
    page.fill("#query", "paint")
    page.fill("#filter", "{source: hd")
    page.press("#filter", "Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "not valid JSON" in page.inner_text("#message")

    # A valid object goes to the server as `filter`; whatever it says is what the page shows.
    body = {"query": "paint", "k": 10, "filter": {"source": "hd"}}
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if "/v1/search" in r.url else None)
    page.fill("#filter", '{"source": "hd"}')
    page.press("#filter", "Enter")
    wait_columns(page)
    assert sorted(s["encoder"] for s in sent) == ["student", "teacher"]
    assert all(s["filter"] == {"source": "hd"} for s in sent)
    response = server.client.post("/v1/search", json=body)
    if response.status_code == 200:
        ids = [h["id"] for h in response.json()["results"][0]["keywords"]]
        assert page.eval_on_selector_all("#r-student li.hit", "els => els.map(e => e.dataset.id)") == ids
    else:
        assert page.inner_text("#e-student") == error_of(response)["message"]


@pytest.mark.slow
def test_readable_on_a_phone(server, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{server.url}/")
        page.fill("#query", "garden hose")
        page.press("#query", "Enter")
        wait_columns(page)
        page.wait_for_selector("#info:not([hidden])")
        # Nothing wider than the screen, and the two columns stack.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        s, t = (page.locator(f"#col-{n}").bounding_box() for n in ("student", "teacher"))
        assert t["y"] >= s["y"] + s["height"] and abs(s["x"] - t["x"]) < 1
    finally:
        context.close()


@pytest.mark.slow
def test_with_an_admin_token_set_the_page_asks_for_it(guarded_server, page):
    srv = guarded_server
    page.goto(f"{srv.url}/")
    expect(page.locator("#info-note")).to_contain_text("admin token needed")
    expect(page.locator("#stats-note")).to_contain_text("admin token needed")
    assert page.locator("#info").is_hidden() and page.locator("#stats-table").is_hidden()
    # Searching needs no token.
    search_in_page(page, "paint")
    wait_columns(page)
    assert page.locator("#r-student li.hit").count() == 10
    # Given the token, the guarded figures appear.
    page.click("#admin summary")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    page.wait_for_selector("#info:not([hidden])")
    page.wait_for_selector("#stats-table:not([hidden])")
    assert page.inner_text("#gate")
