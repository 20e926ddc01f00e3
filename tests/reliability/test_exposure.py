"""What the service tells strangers, and a token that cannot work (issue #28: D, 1, 15).

- An empty or whitespace admin token stops start-up with one sentence that never repeats
  the value (it used to mean "no auth" when empty, "nobody" when whitespace).
- Without an admin token, /v1/info shows neither file system paths nor the pid; /readyz never
  carries the raw text of an unexpected exception; an unknown /v1/embeddings model is answered
  without the artifact's model names.

In process through the ASGI app (its lifespan loads the small artifact), except the start-up
refusal, which is `hlm serve` itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import ValidationError

from service.main import create_app
from service.runtime import Runtime
from service.settings import Settings

from .conftest import TOKEN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@asynccontextmanager
async def app_client(settings: Settings, ready: bool = True):
    """An httpx client on the app with its lifespan running (and, if asked, loaded and warm)."""
    app = create_app(settings)
    state = app.state.hlm.state
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for _ in range(1200):  # polled, 2 min at most (the small artifact loads in seconds)
                if state.phase.value in ("ready", "failed") or not ready:
                    break
                await asyncio.sleep(0.1)
            yield client


# ---- D, 1: the admin token ----

@pytest.mark.parametrize("token", ["", " ", "\t", "  \n "])
def test_an_empty_or_whitespace_admin_token_is_refused_in_one_sentence(token):
    with pytest.raises(ValidationError, match="HLM_ADMIN_TOKEN is set but empty or only whitespace"):
        Settings(admin_token=token)


@pytest.mark.parametrize("token", ["s3cret ", " s3cret", "s3cr\u00e9t", "s3\ncret"])
def test_a_token_no_request_could_carry_is_refused(token):
    with pytest.raises(ValidationError, match="printable ASCII without whitespace at its ends"):
        Settings(admin_token=token)


@pytest.mark.parametrize("token", ["", " ", "leaked-secret "])
def test_hlm_serve_refuses_to_start_with_an_unusable_token(small_artifact, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HLM_")} | {"HLM_ADMIN_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "hlm.cli", "serve", "--artifact", str(small_artifact), "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hlm serve: invalid settings: HLM_ADMIN_TOKEN"), lines
    assert "Traceback" not in lines[0] and "input_value" not in lines[0]
    if token.strip():
        assert token.strip() not in lines[0]  # the secret is never repeated


# ---- 15: small leaks ----

@pytest.fixture(scope="module")
def open_info(small_artifact):
    """/v1/info of a server without an admin token, and with one (token presented)."""
    async def main():
        out = {}
        for name, token in (("open", None), ("guarded", TOKEN)):
            settings = Settings(artifact_dir=small_artifact, admin_token=token, warmup_rounds=0, reload_on_sighup=False)
            async with app_client(settings) as client:
                headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
                out[name] = (await client.get("/v1/info", headers=headers)).json()
                out[name + "_embeddings"] = await client.post(
                    "/v1/embeddings", json={"input": "drill", "model": "no-such-model"})
        return out
    return asyncio.run(main())


def test_info_without_a_token_shows_no_path_and_no_pid(open_info, small_artifact):
    info = open_info["open"]
    text = str(info)
    assert str(small_artifact) not in text and str(small_artifact.resolve()) not in text
    assert "path" not in info["artifact"] and "resolved" not in info["artifact"]
    assert "pid" not in info["process"] and str(os.getpid()) not in text
    assert info["artifact"]["sha256"] and info["encoders"]["student"]["dim"] == 768  # what clients need stays
    guarded = open_info["guarded"]  # the operator with the token sees everything
    assert guarded["artifact"]["resolved"] == str(small_artifact.resolve()) and guarded["process"]["pid"] == os.getpid()


def test_an_unknown_embeddings_model_is_not_told_the_artifacts_model_names(open_info):
    response = open_info["open_embeddings"]
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "'student'" in error["message"] and "'teacher'" in error["message"]
    for name in (open_info["guarded"]["encoders"][e]["model"] for e in ("student", "teacher")):
        assert name not in error["message"]


def test_readyz_never_carries_the_text_of_an_unexpected_exception(small_artifact, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("/srv/secret/internal/path exploded at 0xdeadbeef")

    monkeypatch.setattr(Runtime, "load", broken)

    async def main():
        settings = Settings(artifact_dir=small_artifact, warmup_rounds=0, reload_on_sighup=False)
        async with app_client(settings) as client:
            return await client.get("/readyz")

    response = asyncio.run(main())
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failed" and "server log" in body["detail"]
    assert "secret" not in response.text and "RuntimeError" not in response.text and "0xdeadbeef" not in response.text
