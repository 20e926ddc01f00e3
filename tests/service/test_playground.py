"""The playground at / in a real browser (Debian's Chromium, driven by Playwright), /v1/stats,
/v1/judgments.

Everything runs against the real service on loopback, serving the product's student (the
``static_artifact`` fixture: the tiny static build, servable by its own gate): the page's
figures are compared with what the API itself answers for the same query. The README's two
screenshots (docs/playground.png, desktop; docs/playground-phone.png) are taken here on every
run, so they show today's page. Playwright's own browser download is not reachable from these
machines; scripts/test.sh installs Debian's `chromium` instead, and a missing browser fails the
run rather than skipping it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from playwright.sync_api import expect

from http_helpers import REPO, error_of
from models.eval.metrics import ndcg_at_k

pytestmark = pytest.mark.timeout(600)

CHROMIUM = Path(os.environ.get("HLM_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "playground-test-token-51c2"
SCREENSHOT = REPO / "docs" / "playground.png"
PHONE_SCREENSHOT = REPO / "docs" / "playground-phone.png"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}


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


def new_page(browser, **context):
    ctx = browser.new_context(**({"viewport": DESKTOP} | context))
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    return ctx, pg


@pytest.fixture()
def page(browser):
    ctx, pg = new_page(browser)
    yield pg
    ctx.close()
    assert not pg.errors, pg.errors  # no script error on any page


@pytest.fixture()
def phone(browser):
    ctx, pg = new_page(browser, viewport=PHONE, is_mobile=True, has_touch=True)
    yield pg
    ctx.close()
    assert not pg.errors, pg.errors


@pytest.fixture(scope="module")
def pserver(static_server):
    """The product's student served: the tiny static build (tests/service/conftest.py)."""
    return static_server


@pytest.fixture(scope="module")
def guarded_server(start_server, static_artifact):
    """A fresh server with an admin token: /v1/info and /v1/stats need it."""
    srv = start_server(static_artifact, admin_token=TOKEN, shadow_rate=0, max_queue_wait_ms=0, teacher_max_queue_wait_ms=0)
    srv.wait_for("/readyz")
    return srv


def api(server, query: str, k: int, encoder: str, **extra) -> dict:
    response = server.client.post("/v1/search", json={"query": query, "k": k, "encoder": encoder} | extra)
    assert response.status_code == 200, response.text
    return response.json()


def api_ids(server, query: str, k: int, encoder: str, **extra) -> list[str]:
    return [h["id"] for h in api(server, query, k, encoder, **extra)["results"][0]["keywords"]]


def shown_ids(pg, name: str) -> list[str]:
    return pg.eval_on_selector_all(f"#r-{name} li.hit", "els => els.map(e => e.dataset.id)")


@pytest.fixture(scope="module")
def judged_query(pserver):
    """A judged dev query of the artifact whose top 5 hold labelled keywords in both lists (the
    most such among the first 40, ties to the first): the labels have something to show."""
    listing = pserver.client.get("/v1/judgments").json()
    assert listing["available"] and listing["count"] == len(listing["queries"]) > 0
    best = (-1, None, None)
    for query in listing["queries"][:40]:
        labels = pserver.client.get("/v1/judgments", params={"query": query}).json()["labels"]
        hits = [api_ids(pserver, query, 5, e) for e in ("student", "teacher")]
        labelled = min(sum(h in labels for h in ids) for ids in hits)
        if labelled > best[0]:
            best = (labelled, query, labels)
    assert best[0] >= 1, "no judged query with a labelled keyword in both top 5s"
    return best[1], best[2]


# The page's policy forbids eval, so waits poll from here (expect) instead of page.wait_for_function.


def search_in_page(pg, query: str) -> None:
    """Keyboard only: the query box has the focus on load, Enter submits."""
    expect(pg.locator("#query")).to_be_focused()
    pg.keyboard.type(query)
    pg.keyboard.press("Enter")


def wait_columns(pg) -> None:
    for name in ("student", "teacher"):
        expect(pg.locator(f"#r-{name}")).to_have_attribute("data-count", re.compile(r"^\d+$"))
    expect(pg.locator("#compare")).not_to_have_attribute("aria-busy", "true")


def open_at(pg, server, **params) -> None:
    """The page at an address that names a search (as a shared link would)."""
    pg.goto(f"{server.url}/?{urlencode(params)}" if params else f"{server.url}/")


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


def test_judgments_are_the_dev_splits_labels_of_the_indexed_products(pserver, static_artifact, data_dir):
    from models.data import load_sample_judgments
    from models.splits import split_of

    manifest = json.loads((static_artifact / "manifest.json").read_text())
    entry = manifest["judgments"]
    assert entry["path"] in manifest["files"] and entry["split"] == "dev"  # listed and checksummed
    listing = pserver.client.get("/v1/judgments").json()
    assert listing["count"] == entry["queries"] and listing["split"] == "dev"
    store = (static_artifact / manifest["index"]["store"]).read_text(encoding="utf-8").splitlines()[1:]
    indexed = {line.split("\t", 1)[0] for line in store}
    judged = load_sample_judgments(data_dir).by_query
    # Every dev query with a judged product in the index, no train query, the labels as judged.
    expected = {q for q, graded in judged.items() if split_of(q) == "dev" and any(f"hd:{d}" in indexed for d in graded)}
    assert set(listing["queries"]) == expected
    for query in listing["queries"][:25]:
        answer = pserver.client.get("/v1/judgments", params={"query": f"  {query}  "}).json()  # cleaned up as a search
        assert answer["judged"] and answer["query"] == query
        assert answer["labels"] == {f"hd:{d}": r for d, r in judged[query].items() if f"hd:{d}" in indexed}
    train = next(q for q in judged if split_of(q) == "train")  # trained on: never served as a label
    answer = pserver.client.get("/v1/judgments", params={"query": train}).json()
    assert answer["available"] and answer["judged"] is False and answer["labels"] == {}
    for bad in ("", "   ", "\u200b"):
        response = pserver.client.get("/v1/judgments", params={"query": bad})
        assert response.status_code == 422 and "empty" in error_of(response)["message"]


def test_an_artifact_built_before_the_judgments_says_so(start_server, static_artifact, tmp_path):
    from artifact.judged import PATH
    from artifact.manifest import artifact_hash

    old = tmp_path / "old"
    for path in static_artifact.rglob("*"):  # hard links: nothing of the original is written
        if path.is_file() and path.relative_to(static_artifact).as_posix() not in (PATH, "manifest.json"):
            (old / path.relative_to(static_artifact)).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, old / path.relative_to(static_artifact))
    manifest = json.loads((static_artifact / "manifest.json").read_text())
    del manifest["judgments"], manifest["files"][PATH]
    manifest["artifact_sha256"] = artifact_hash(manifest["files"], manifest)
    (old / "manifest.json").write_text(json.dumps(manifest))
    srv = start_server(old, shadow_rate=0)
    srv.wait_for("/readyz")
    answer = srv.client.get("/v1/judgments").json()
    assert answer["available"] is False and "rebuild" in answer["note"]
    assert srv.client.get("/v1/judgments", params={"query": "paint"}).json()["available"] is False
    srv.stop()


# ---- in the browser ----


@pytest.mark.slow
def test_the_two_lists_are_the_apis_timed_apart_with_ranks_labels_and_a_shareable_address(
        pserver, page, judged_query):
    query, labels = judged_query
    k = 10
    order: list[tuple[str, str]] = []

    def seen(kind):
        def record(request):
            if "/v1/search" in request.url:
                order.append((kind, request.post_data_json["encoder"]))
        return record

    page.on("request", seen("sent"))
    page.on("requestfinished", seen("answered"))
    page.goto(f"{pserver.url}/")
    search_in_page(page, query)
    wait_columns(page)
    expect(page.locator("#judged")).to_have_attribute("data-labelled", re.compile(r"^\d+$"))

    # Timed apart: the teacher's request leaves only once the student's is answered.
    assert order == [("sent", "student"), ("answered", "student"), ("sent", "teacher"), ("answered", "teacher")]

    student, teacher = api_ids(pserver, query, k, "student"), api_ids(pserver, query, k, "teacher")
    assert {n: shown_ids(page, n) for n in ("student", "teacher")} == {"student": student, "teacher": teacher}
    # Each hit's rank in the other list.
    for name, mine, other in (("student", student, teacher), ("teacher", teacher, student)):
        ranks = page.eval_on_selector_all(f"#r-{name} li.hit", "els => els.map(e => e.dataset.otherRank)")
        assert ranks == [str(other.index(i) + 1) if i in other else "" for i in mine]
        texts = page.eval_on_selector_all(f"#r-{name} li.hit .other", "els => els.map(e => e.textContent)")
        other_name = "teacher" if name == "student" else "student"
        assert texts == [f"{other_name} #{other.index(i) + 1}" if i in other else "only here" for i in mine]
        marked = page.eval_on_selector_all(f"#r-{name} li.shared", "els => els.map(e => e.dataset.id)")
        assert set(marked) == set(student) & set(teacher)
    # The human labels of the judged products, and nDCG@k from them as models/eval/metrics.py counts it.
    plain_labels = {kid[3:]: r for kid, r in labels.items()}
    for name, ids in (("student", student), ("teacher", teacher)):
        shown = page.eval_on_selector_all(f"#r-{name} li.hit", "els => els.map(e => e.dataset.label || null)")
        assert [None if s is None else float(s) for s in shown] == [labels.get(i) for i in ids]
        assert any(s is not None for s in shown)
        expected = ndcg_at_k([i[3:] for i in ids], plain_labels, k)
        assert float(page.get_attribute("#judged", f"data-{name}-ndcg")) == pytest.approx(expected, abs=1e-4)
    assert int(page.get_attribute("#judged", "data-labelled")) == len(labels)
    overlap = page.locator("#overlap")
    assert int(overlap.get_attribute("data-shared")) == len(set(student) & set(teacher))
    for name in ("student", "teacher"):
        assert re.search(r"this request: server \d+\.\d+ ms \(queue", page.inner_text(f"#t-{name}"))
        precision = api(pserver, query, 1, name)["precision"]
        assert page.inner_text(f"#p-{name}") == f"({precision})"

    # The address carries the search: opened elsewhere, it shows the same comparison.
    params = parse_qs(urlparse(page.url).query)
    assert params == {"q": [query], "k": [str(k)]}
    other_tab = page.context.new_page()
    other_tab.goto(page.url)
    wait_columns(other_tab)
    assert shown_ids(other_tab, "student") == student and other_tab.input_value("#query") == query
    other_tab.close()


@pytest.mark.slow
def test_live_figures_carry_their_request_counts_and_the_gate_its_two_values(pserver, page):
    page.goto(f"{pserver.url}/")
    search_in_page(page, "cordless drill")
    wait_columns(page)
    page.wait_for_selector("#info:not([hidden])")
    expect(page.locator("#stats-body tr[data-encoder=teacher] [data-field=served]")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    for name in ("student", "teacher"):
        row = page.locator(f"#stats-body tr[data-encoder={name}]")
        served = row.locator("[data-field=served]").inner_text()
        for field in ("served_rps", "p50", "p99"):
            assert row.locator(f"[data-field={field}] .n").inner_text() == f"n={served}"

    info = pserver.client.get("/v1/info").json()
    gate = info["gate"]
    assert gate["passed"] and page.get_attribute("#gate", "data-passed") == "true"  # the static build passes its gate
    assert float(page.get_attribute("#gate", "data-student")) == gate["student"]
    assert float(page.get_attribute("#gate", "data-teacher")) == gate["teacher"]
    text = page.inner_text("#gate")
    assert f"{gate['student']:.4f}" in text and f"{gate['teacher']:.4f}" in text and f"{gate['ratio']:.3f}×" in text

    # A readable evaluation: sections with labelled rows, not the manifest's key paths.
    sections = page.eval_on_selector_all("#eval-body tr.section", "els => els.map(e => e.textContent)")
    assert any(s.startswith("Agreement with the teacher on") for s in sections)
    assert "Index" in sections and any(s.startswith("Export parity") for s in sections)
    table = page.inner_text("#eval-table")
    assert "parity ›" not in table and "student_fp32" not in table and "hnsw_recall_at_10" not in table
    recall = info["eval"]["hnsw_recall_at_10"]
    assert f"{recall * 100:.1f} %" in table
    # The encoders by their ids (GET /v1/models).
    facts = page.inner_text("#artifact-facts")
    assert info["encoders"]["student"]["id"] in facts and info["encoders"]["teacher"]["id"] in facts


@pytest.mark.slow
def test_back_and_forward_walk_the_searches(pserver, page):
    page.goto(f"{pserver.url}/")
    for query in ("garden hose", "paint roller"):
        page.fill("#query", query)
        page.press("#query", "Enter")
        expect(page).to_have_url(re.compile(r"q=" + query.replace(" ", r"\+")))
        wait_columns(page)
    page.go_back()
    expect(page.locator("#query")).to_have_value("garden hose")
    expect(page.locator("#r-student li.hit").first).to_have_attribute("data-id", api_ids(pserver, "garden hose", 10, "student")[0])


@pytest.mark.slow
@pytest.mark.parametrize("typed", ["", "   "], ids=["empty", "spaces"])
def test_an_empty_query_says_so_and_sends_nothing(pserver, page, typed):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/search" in r.url else None)
    page.goto(f"{pserver.url}/")
    search_in_page(page, typed)
    page.wait_for_selector("#message:not([hidden])")
    assert "the query box is empty" in page.inner_text("#message")
    assert page.eval_on_selector("#query", "e => e === document.activeElement")
    assert page.locator("#r-student li").count() == 0 and page.locator("#r-teacher li").count() == 0
    assert requests == []


@pytest.mark.slow
def test_a_server_refusal_shows_its_message_not_a_trace(pserver, page):
    max_k = pserver.client.get("/v1/info").json()["limits"]["max_k"]
    expected = error_of(pserver.client.post("/v1/search", json={"query": "paint", "k": max_k + 1}))["message"]
    page.goto(f"{pserver.url}/")
    page.fill("#k", str(max_k + 1))
    page.fill("#query", "paint")
    page.press("#k", "Enter")  # Enter in any field submits
    page.wait_for_selector("#e-teacher:not([hidden])")
    assert page.inner_text("#e-student") == expected == page.inner_text("#e-teacher")
    assert page.inner_text("#message") == expected
    assert page.locator("#overlap").is_hidden()
    assert "Traceback" not in page.content()


@pytest.mark.slow
def test_the_filter_field_its_attributes_and_what_the_server_says_of_it(pserver, page):
    page.goto(f"{pserver.url}/")
    page.fill("#query", "paint")
    page.fill("#filter", "{source: hd")
    page.press("#filter", "Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "not valid JSON" in page.inner_text("#message")

    # The filterable attributes, from /v1/info: a click puts one in the filter field.
    page.wait_for_selector("#filterable:not([hidden])")
    page.click('#filterable button.chip[data-filter=\'{"source":"hd"}\']')
    expect(page.locator("#filter")).to_have_value('{"source":"hd"}')
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if "/v1/search" in r.url else None)
    page.press("#filter", "Enter")
    wait_columns(page)
    assert [s["encoder"] for s in sent] == ["student", "teacher"]
    assert all(s["filter"] == {"source": "hd"} and s["attributes"] is True for s in sent)
    ids = api_ids(pserver, "paint", 10, "student", filter={"source": "hd"})
    assert shown_ids(page, "student") == ids and all(i.startswith("hd:") for i in ids)
    attrs = page.eval_on_selector_all("#r-student li.hit .attr", "els => els.map(e => e.textContent)")
    assert attrs == ["source: hd"] * len(ids)  # each hit's attributes

    # A value no keyword has: an empty answer and the server's warning; an unknown attribute: its 422.
    page.fill("#filter", '{"source": "HD"}')
    page.press("#filter", "Enter")
    expect(page.locator("#message")).to_contain_text('no keyword has source = "HD"')
    expect(page.locator("#r-student")).to_have_attribute("data-count", "0")
    assert page.inner_text("#r-student") == "No keywords matched."
    page.fill("#filter", '{"Source": "hd"}')
    page.press("#filter", "Enter")
    page.wait_for_selector("#e-student:not([hidden])")
    expected = error_of(pserver.client.post("/v1/search", json={"query": "paint", "filter": {"Source": "hd"}}))["message"]
    assert page.inner_text("#e-student") == expected and "'source'" in expected


@pytest.mark.slow
def test_the_length_prior_field_reaches_both_searches_and_the_address(pserver, page, judged_query):
    query, _ = judged_query
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if "/v1/search" in r.url else None)
    page.goto(f"{pserver.url}/")
    page.fill("#query", query)
    page.fill("#prior", "0.05")
    page.press("#prior", "Enter")
    wait_columns(page)
    assert [(s["encoder"], s["length_prior"]) for s in sent] == [("student", 0.05), ("teacher", 0.05)]
    assert shown_ids(page, "student") == api_ids(pserver, query, 10, "student", length_prior=0.05)
    assert parse_qs(urlparse(page.url).query)["lp"] == ["0.05"]
    other_tab = page.context.new_page()  # the shared address brings the prior back
    other_tab.goto(page.url)
    wait_columns(other_tab)
    assert other_tab.input_value("#prior") == "0.05"
    other_tab.close()
    # Out of its range: the server's own message, not a trace.
    page.fill("#prior", "0.5")
    page.press("#prior", "Enter")
    page.wait_for_selector("#e-student:not([hidden])")
    expected = error_of(pserver.client.post("/v1/search", json={"query": query, "length_prior": 0.5}))["message"]
    assert page.inner_text("#e-student") == expected and "length_prior" in expected


@pytest.mark.slow
def test_on_a_phone_both_lists_are_a_tap_away(pserver, phone, judged_query):
    query, _ = judged_query
    open_at(phone, pserver, q=query, k=5)
    wait_columns(phone)
    phone.wait_for_selector("#info:not([hidden])")
    # Nothing wider than the screen; one list at a time, the tabs switch.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    expect(phone.locator("#tab-student")).to_be_visible()
    expect(phone.locator("#r-student")).to_be_visible()
    expect(phone.locator("#r-teacher")).to_be_hidden()
    phone.tap("#tab-teacher")
    expect(phone.locator("#r-teacher")).to_be_visible()
    expect(phone.locator("#r-student")).to_be_hidden()
    assert phone.get_attribute("#tab-teacher", "aria-selected") == "true"
    assert shown_ids(phone, "teacher") == api_ids(pserver, query, 5, "teacher")
    phone.tap("#tab-student")
    expect(phone.locator("#r-student")).to_be_visible()
    phone.screenshot(path=str(PHONE_SCREENSHOT), full_page=False)
    shrink(PHONE_SCREENSHOT)


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


@pytest.mark.slow
def test_the_readme_screenshot_shows_todays_page(pserver, browser, judged_query):
    """docs/playground.png: a judged dev query at k = 5 (labels, ranks, the gate and the live
    figures in one picture), written on every run."""
    query, _ = judged_query
    ctx, pg = new_page(browser, viewport={"width": 1100, "height": 820})
    try:
        open_at(pg, pserver, q=query, k=5)
        wait_columns(pg)
        pg.wait_for_selector("#info:not([hidden])")
        pg.wait_for_selector("#stats-table:not([hidden])")
        expect(pg.locator("#r-student li.hit")).to_have_count(5)
        expect(pg.locator("#judged")).to_have_attribute("data-labelled", re.compile(r"^\d+$"))
        height = min(pg.evaluate("document.documentElement.scrollHeight"), 1500)
        pg.screenshot(path=str(SCREENSHOT), full_page=True, clip={"x": 0, "y": 0, "width": 1100, "height": height})
        assert not pg.errors, pg.errors
    finally:
        ctx.close()
    shrink(SCREENSHOT)


def shrink(path: Path) -> None:
    """A palette of 128 colours keeps the text sharp at a third of the size, for the repository."""
    from PIL import Image

    with Image.open(path) as shot:
        assert shot.format == "PNG" and shot.width > 300
        small = shot.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)
