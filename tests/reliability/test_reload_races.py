"""Reloads that meet something else: a second reload, a folder replaced mid-load, a shutdown.

The real app (``create_app``) with its real lifespan, in this process, driven through ASGI
on one event loop, so every interleaving is chosen by the test, not by the scheduler. Only
one thing is changed: the reload's manifest step (``service.reload.load_manifest``) is
wrapped so that, after the real verification, it waits for the test — the one moment a
reload can be caught in the middle (forcing the race, not faking the work).
"""

from __future__ import annotations

import asyncio
import os
import threading

import httpx
import pytest

import service.reload
from service.main import create_app
from service.settings import Settings

from .conftest import TOKEN, clone_artifact, rewrite_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def folders(small_artifact, tmp_path):
    """``current`` -> X (a copy of the small artifact); B: the same with other keyword texts."""
    x = clone_artifact(small_artifact, tmp_path / "X")
    b = clone_artifact(small_artifact, tmp_path / "B", copy=("index/keywords.tsv",))
    lines = (b / "index/keywords.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0]] + [f"{row_id}\tB: {text}" for row_id, _, text in (line.partition("\t") for line in lines[1:])]
    (b / "index/keywords.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rewrite_manifest(b, ("index/keywords.tsv",))
    os.symlink(x, tmp_path / "current")
    return {"link": tmp_path / "current", "X": x, "B": b, "root": tmp_path}


@pytest.fixture
def paused(monkeypatch):
    """The reload stops after verifying its manifest until ``proceed`` is set."""
    started, proceed = threading.Event(), threading.Event()
    real = service.reload.load_manifest

    def wrapper(settings, root, *rest):
        manifest = real(settings, root, *rest)
        started.set()
        assert proceed.wait(120), "the test never let the reload go on"
        return manifest

    monkeypatch.setattr(service.reload, "load_manifest", wrapper)
    return started, proceed


def run(folders, scenario):
    settings = Settings(artifact_dir=folders["link"], admin_token=TOKEN, reload_on_sighup=False, shadow_rate=0,
                        warmup_rounds=1)
    app = create_app(settings)

    async def main():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        exited = False
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hlm.test", timeout=120,
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                for _ in range(2400):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the app never became ready")

                async def shutdown():
                    nonlocal exited
                    exited = True
                    await lifespan.__aexit__(None, None, None)

                return await scenario(app, client, shutdown)
        finally:
            if not exited:
                await lifespan.__aexit__(None, None, None)

    return asyncio.run(main())


async def served_sha(client) -> str:
    return (await client.get("/v1/info")).json()["artifact"]["sha256"]


def test_a_second_reload_while_one_runs_is_refused_and_the_first_completes(folders, paused):
    started, proceed = paused

    async def scenario(app, client, shutdown):
        before = await served_sha(client)
        first = asyncio.create_task(client.post("/admin/reload"))
        await asyncio.to_thread(started.wait, 120)
        assert (await client.get("/admin/reload")).json()["running"] is True
        second = await client.post("/admin/reload")
        proceed.set()
        done = await first
        third = await client.post("/admin/reload")  # the lock is free again
        return before, second, done, third

    before, second, done, third = run(folders, scenario)
    assert second.status_code == 409 and second.json()["error"]["code"] == "reload_in_progress", second.text
    assert second.json()["error"]["message"] == "A reload is already running; wait for it to finish."
    assert done.status_code == 200 and done.json()["status"] == "reloaded", done.text
    assert done.json()["previous_sha256"] == before
    assert third.status_code == 200, third.text


def test_a_folder_replaced_while_it_loads_is_refused_and_the_old_one_keeps_serving(folders, paused):
    started, proceed = paused

    async def scenario(app, client, shutdown):
        before = await served_sha(client)
        reload = asyncio.create_task(client.post("/admin/reload"))
        await asyncio.to_thread(started.wait, 120)
        # The operator replaces the folder in place (not the symlink) while it is being loaded.
        os.rename(folders["X"], folders["root"] / "X.old")
        os.rename(folders["B"], folders["X"])
        proceed.set()
        response = await reload
        hits = (await client.post("/v1/search", json={"query": "cordless drill"})).json()["results"][0]["keywords"]
        return before, response, await served_sha(client), hits

    before, response, after, hits = run(folders, scenario)
    assert response.status_code == 409, response.text
    message = response.json()["error"]["message"]
    # Caught by the file pins (artifact.manifest.FilePins: the files loaded are not the ones
    # hashed) before the manifest comparison after warm-up would catch it.
    assert message.startswith(f"Reload refused, still serving artifact {before[:12]}: Artifact file "), message
    assert message.endswith("changed after it was verified (replaced or rewritten while it was being loaded); "
                            "load the artifact again."), message
    assert after == before
    assert hits and not any(h["text"].startswith("B: ") for h in hits)


def test_a_shutdown_during_a_reload_waits_for_it_and_never_starts_the_new_artifact(folders, paused, caplog):
    started, proceed = paused

    async def scenario(app, client, shutdown):
        state = app.state.hlm.state
        old = state.runtime
        reload = asyncio.create_task(client.post("/admin/reload"))
        await asyncio.to_thread(started.wait, 120)
        stopping = asyncio.create_task(shutdown())  # what SIGTERM leads to, after in-flight requests
        await asyncio.sleep(0.1)
        assert not stopping.done()  # the shutdown waits for the reload in progress
        draining = await client.get("/readyz")
        proceed.set()
        response = await reload
        await asyncio.wait_for(stopping, 120)
        return draining, response, state.runtime is old

    with caplog.at_level("INFO", logger="service"):
        draining, response, kept_old = run(folders, scenario)
    assert draining.status_code == 503
    assert response.status_code == 409 and response.json()["error"]["code"] == "shutting_down", response.text
    assert kept_old  # the new runtime was never swapped in (nor started)
    messages = [r.getMessage() for r in caplog.records]
    assert "shut down: queues drained" in messages
    assert not any(m.startswith("reload (POST /admin/reload): now serving") for m in messages)
