"""POST /v1/embeddings through the `openai` Python client against the real service on loopback,
serving the product's student (the tiny static build).

The reference is ONNX Runtime run directly on the artifact's own ONNX files, each text alone,
tokenised by the artifact's tokenizer.json with the `tokenizers` library (no project code
between): /v1/embed and /v1/embeddings must both hand back those vectors, in their shapes.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime

import numpy as np
import openai
import pytest

from http_helpers import error_of

pytestmark = pytest.mark.timeout(300)

ONE = "cordless drill"
MANY = ["cordless drill", "garden hose 50 ft", "how to fix a leaky faucet in the bathroom sink"]


@pytest.fixture(scope="module")
def server(static_server):
    return static_server


@pytest.fixture(scope="module")
def onnx_direct(server):
    """encoder -> texts -> vectors from onnxruntime on the artifact's ONNX file of the precision
    the service serves, one text a call (no batch-mates, no padding)."""
    import onnxruntime
    from tokenizers import Tokenizer

    manifest = json.loads((server.artifact / "manifest.json").read_text())
    out = {}
    for encoder in ("student", "teacher"):
        spec = manifest["encoders"][encoder]
        onnx = spec["onnx_int8"] if spec.get("default_precision") == "int8" else spec["onnx"]
        session = onnxruntime.InferenceSession(str(server.artifact / onnx), providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(server.artifact / spec["tokenizer"]))

        def run(texts, session=session, tokenizer=tokenizer):
            rows = []
            for text in texts:
                enc = tokenizer.encode(text)
                feed = {"input_ids": np.array([enc.ids], dtype=np.int64),
                        "attention_mask": np.array([enc.attention_mask], dtype=np.int64)}
                rows.append(session.run(["embedding"], feed)[0][0])
            return np.array(rows, dtype=np.float64)

        out[encoder] = run
    return out


@pytest.fixture(scope="module")
def client(server):
    # No retries: a refused request must show up as the failure it is.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60) as c:
        yield c


def reference(server, texts: list[str], encoder: str) -> np.ndarray:
    response = server.client.post("/v1/embed", json={"queries": texts, "encoder": encoder})
    assert response.status_code == 200, response.text
    return np.array([r["embedding"] for r in response.json()["results"]], dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("model", ["student", "teacher"])
@pytest.mark.parametrize("encoding_format", ["float", "base64", None], ids=["float", "base64", "client-default"])
@pytest.mark.parametrize("inputs", [ONE, MANY], ids=["string", "list"])
def test_the_openai_client_gets_the_services_vectors(server, client, model, encoding_format, inputs):
    texts = [inputs] if isinstance(inputs, str) else inputs
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = client.embeddings.create(input=inputs, model=model, **kwargs)

    assert response.object == "list" and response.model == model
    assert [d.index for d in response.data] == list(range(len(texts)))
    assert all(d.object == "embedding" for d in response.data)
    if encoding_format == "base64":
        # Asked for explicitly, the client hands the string over untouched: little-endian float32.
        assert all(isinstance(d.embedding, str) for d in response.data)
        vectors = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data],
                           dtype=np.float64)
    else:
        # float, or the client's default (it asks for base64 and decodes it itself).
        vectors = np.array([d.embedding for d in response.data], dtype=np.float64)
    expected = reference(server, texts, model)
    assert vectors.shape == expected.shape == (len(texts), 768)
    assert cosines(vectors, expected).min() > 0.999
    assert response.usage.prompt_tokens == response.usage.total_tokens
    # At least [CLS] word [SEP] per text; each text here is a few tokens long.
    assert 3 * len(texts) <= response.usage.prompt_tokens <= 40 * len(texts)


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_both_routes_give_the_vectors_onnx_runtime_gives_on_the_artifact(server, client, onnx_direct, encoder):
    """/v1/embed and /v1/embeddings against onnxruntime on the artifact's own file, each text
    alone: the same vector to float32 rounding (a route that served the other encoder, a
    stale or other artifact, or mangled the text would not be)."""
    texts = MANY + ["paint", "18v lithium ion battery charger"]
    expected = onnx_direct[encoder](texts)
    embed = reference(server, texts, encoder)
    openai_vectors = np.array([d.embedding for d in client.embeddings.create(
        input=texts, model=encoder, encoding_format="float").data], dtype=np.float64)
    for got in (embed, openai_vectors):
        assert got.shape == expected.shape == (len(texts), 768)
        assert cosines(got, expected).min() > 1 - 1e-5
        np.testing.assert_allclose(got, expected, atol=2e-4)
    # The two encoders differ (the test would not notice a route that swapped them otherwise).
    other = onnx_direct["teacher" if encoder == "student" else "student"](texts)
    assert cosines(embed, other).max() < 0.999


def test_the_encoders_model_names_from_info_are_accepted(server, client):
    info = server.client.get("/v1/info").json()
    name = info["encoders"]["teacher"]["model"]
    response = client.embeddings.create(input=ONE, model=name, encoding_format="float")
    assert response.model == name
    assert cosines(np.array([response.data[0].embedding]), reference(server, [ONE], "teacher"))[0] > 0.999


# ---- GET /v1/models: the ids clients use ----

ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def test_client_models_list_names_both_encoders_by_identifier(server, client):
    manifest = json.loads((server.artifact / "manifest.json").read_text())
    models = client.models.list().data
    ids = [m.id for m in models]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(ID.match(i) for i in ids), ids
    student, teacher = models
    # Derived from the manifest: the tiny artifact's student is the static one trained in the
    # build, its teacher the packaged all-mpnet-base-v2.
    assert student.id == "hlm-student-static" and manifest["profile"]["student"] == "static"
    assert teacher.id == "hlm-teacher-mpnet"
    built = int(datetime.fromisoformat(manifest["created_utc"]).timestamp())
    assert all(m.object == "model" and m.owned_by == "hlm" and m.created == built for m in models)
    info = server.client.get("/v1/info").json()["encoders"]
    assert [info["student"]["id"], info["teacher"]["id"]] == ids
    assert client.models.retrieve(teacher.id).id == teacher.id
    assert client.models.retrieve("student").id == student.id  # the role names stay accepted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")


@pytest.mark.parametrize("encoder", ["student", "teacher"])
def test_a_listed_id_gives_its_encoders_vectors(server, client, encoder):
    model_id = server.client.get("/v1/info").json()["encoders"][encoder]["id"]
    response = client.embeddings.create(input=MANY, model=model_id, encoding_format="float")
    assert response.model == model_id
    vectors = np.array([d.embedding for d in response.data], dtype=np.float64)
    assert cosines(vectors, reference(server, MANY, encoder)).min() > 0.999


def test_an_unknown_model_is_a_404_in_the_services_error_shape(server, client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(input=ONE, model="text-embedding-3-small")
    err = error_of(server.client.post("/v1/embeddings", json={"input": ONE, "model": "text-embedding-3-small"}))
    assert err["code"] == "model_not_found" and "'student'" in err["message"] and "/v1/models" in err["message"]


@pytest.mark.parametrize("body, words", [
    ({"input": [101, 2054, 102], "model": "student"}, "token ids is not supported"),
    ({"input": [[101, 102]], "model": "student"}, "token ids is not supported"),
    ({"input": "   ", "model": "student"}, "empty"),
    ({"input": [], "model": "student"}, "empty list"),
    ({"input": ONE, "model": "student", "encoding_format": "int8"}, "encoding_format"),
    ({"input": ONE, "model": "student", "dimensions": 256}, "768-d"),
    ({"input": ONE, "model": "student", "temperature": 1}, "temperature"),
    ({"model": "student"}, "input"),
])
def test_bad_requests_get_a_422_with_a_sentence(server, body, words):
    response = server.client.post("/v1/embeddings", json=body)
    assert response.status_code == 422
    assert words in error_of(response)["message"]


def test_too_many_inputs_are_refused(server):
    limit = server.client.get("/v1/info").json()["limits"]["max_queries"]
    response = server.client.post("/v1/embeddings", json={"input": ["paint"] * (limit + 1), "model": "student"})
    assert response.status_code == 422 and f"at most {limit} inputs" in error_of(response)["message"]


def test_dimensions_equal_to_the_encoders_are_accepted(server, client):
    response = client.embeddings.create(input=ONE, model="student", dimensions=768, encoding_format="float")
    assert len(response.data[0].embedding) == 768
