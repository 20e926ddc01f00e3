"""The distributed keyword index: a Milvus collection behind ``retrieval.base.VectorIndex``.

For keyword sets larger than one machine's memory (docs/SCALE.md). The same code talks to a
Milvus cluster (``http://host:19530``), to a local ``milvus-lite server`` and to an embedded
milvus-lite file (a URI ending in ``.db``): pymilvus' ``MilvusClient`` takes all three.

One collection holds one artifact's keywords::

    id              VARCHAR primary key    the keyword store's id ("hd:100001")
    vector          FLOAT_VECTOR(dim)      the teacher's L2-normalised vector; HNSW, metric IP
    text            VARCHAR                what a hit shows
    attributes      JSON                   the attributes as given ({"source": "hd", ...})
    attribute_keys  ARRAY<VARCHAR>         one typed key per attribute: what filters run on

Filters run on a scalar array of typed keys, ``["source","s","hd"]`` (name, type, value as
canonical JSON), not on JSON paths, for three reasons: equality then means exactly what it
means in the hnswlib backend (``retrieval.hnsw.value_key``: True is not 1, 1 is 1.0, "1" is
not 1; comparing JSON paths, milvus-lite takes True == 1); live upserts may bring attribute
names no schema knew, which an array takes without a schema change (one scalar field per
attribute would need one); and each attribute of a filter is one ``array_contains_any``, which
a cluster can serve from an inverted index on the array. The JSON field keeps the attributes
for reading back.

The collection records the artifact's sha256 and the vector dimension in its properties (and
in its description, for people): the service refuses a collection pushed from another
artifact, whose vectors would come from another teacher.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from artifact.manifest import verify as verify_artifact
from artifact.store import read_store
from retrieval.base import SPACE, Hit, IndexUnavailable, SearchParams

log = logging.getLogger(__name__)

SHA_PROPERTY = "hlm.artifact_sha256"
DIM_PROPERTY = "hlm.dim"
# "loading" while `hlm index push` inserts, "complete" once every vector is in and indexed: a
# push killed half-way leaves a collection the service refuses and the next push redoes.
STATE_PROPERTY = "hlm.state"
DEFAULT_COLLECTION = "hlm_keywords"
ID_MAX = 512
TEXT_MAX = 65535  # VARCHAR's ceiling (bytes); max_length costs no storage
MAX_ATTRIBUTE_NAME = 256
MAX_ATTRIBUTES = 64  # per keyword: the array field's capacity
# Bytes of one typed key. The service admits names of 64 characters and string values of 256
# (service/protocol.py); JSON writes a control character as 6 bytes, others take at most 4:
# 64 + 6 x 256 + the brackets stay under 2048.
KEY_MAX = 2048
_INT64 = 2**63
LOAD_AT_START_S = 30.0  # how long start-up and the readiness probe wait for a collection to load
# pymilvus logs every failed RPC, and every failed reconnection, with its traceback: while
# Milvus is down that is two tracebacks per query. This module logs one line per change of
# health instead. (Set after pymilvus is imported: its logging.config call resets children.)
_QUIET = {"pymilvus.decorators": logging.CRITICAL, "pymilvus.client.connection_manager": logging.ERROR}


RECONNECT = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.min_reconnect_backoff_ms": 200,
             "grpc.max_reconnect_backoff_ms": 2000}


class MilvusUnreachable(IndexUnavailable):
    """Milvus could not be reached when the index was opened (start-up): one sentence."""


def _milvus():
    """pymilvus, imported on first use: it belongs to the optional extra ``scale``."""
    try:
        import pymilvus
    except ImportError:  # the serving image without the extra
        raise MilvusUnreachable("HLM_INDEX_BACKEND=milvus needs pymilvus: install the project's "
                                "'scale' extra (pip install 'hlm-retrieval[scale]').") from None
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    return pymilvus


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a call to Milvus raises when Milvus (not our request) fails."""
    import grpc
    from pymilvus.exceptions import MilvusException

    return (MilvusException, grpc.RpcError, grpc.FutureTimeoutError, ConnectionError, TimeoutError)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return message.strip().splitlines()[0][:200].rstrip(".")


def _not_loaded(exc: BaseException) -> bool:
    # 101 is Milvus' "collection not loaded": a restarted milvus-lite server, or a cluster
    # whose query nodes released it. Loading it again is the recovery.
    return getattr(exc, "code", None) == 101 or "load()" in str(getattr(exc, "message", ""))


# ---- filters: our dict -> a Milvus boolean expression ----

class _MatchesNothing(Exception):
    """The filter can match no keyword (an empty "any of", a type the field cannot hold)."""


def quote(value: str) -> str:
    """A Milvus string literal for any Python string.

    Milvus' grammar (and milvus-lite's tokenizer) reads double-quoted strings with C-style
    escapes and refuses raw line breaks; escaping the backslash first, then the quote and
    the line breaks, leaves no way for a value to end the literal early.
    """
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def attribute_key(name: Any, value: Any) -> str:
    """The typed key of one attribute value: ``["name","s","hd"]``; the equality of the hnswlib
    backend (``retrieval.hnsw.value_key``): a boolean is not a number, 1 and 1.0 are one number."""
    if not isinstance(name, str) or not name or len(name) > MAX_ATTRIBUTE_NAME:
        raise ValueError(f"attribute name {name!r} must be a non-empty string of at most {MAX_ATTRIBUTE_NAME} characters")
    if isinstance(value, bool):  # before int: bool is an int in Python
        kind = "b"
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"the attribute value {value} is not a finite number")
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"the attribute value {value} does not fit a 64-bit integer")
        kind = "n"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    elif isinstance(value, str):
        kind = "s"
    else:
        raise ValueError(f"attribute {name!r}: a value must be a string, number or boolean, not {type(value).__name__}")
    key = json.dumps([name, kind, value], ensure_ascii=False, separators=(",", ":"))
    if len(key.encode()) > KEY_MAX:
        raise ValueError(f"attribute {name!r}: name and value are longer than {KEY_MAX} bytes")
    return key


def attribute_keys(attributes: dict) -> list[str]:
    """The typed keys of a keyword's attributes (ValueError for what the semantics do not cover)."""
    if not isinstance(attributes, dict):
        raise ValueError("keyword attributes must be an object of name -> value")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"a keyword has at most {MAX_ATTRIBUTES} attributes")
    return [attribute_key(name, value) for name, value in attributes.items()]


def filter_expression(flt: Optional[dict]) -> Optional[str]:
    """The Milvus expression of ``SearchParams.filter`` (None: no filter).

    Each attribute must equal its value, or one of its values for a list; all attributes
    must hold (and). A keyword without the attribute, or with a value of another type,
    does not match. Raises ``_MatchesNothing`` when no keyword can match.
    """
    if not flt:
        return None
    if not isinstance(flt, dict):
        raise ValueError("a filter must be an object of attribute -> value or list of values")
    clauses = []
    for name, wanted in flt.items():
        values = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
        keys = list(dict.fromkeys(attribute_key(name, v) for v in values))  # validates every value
        if not keys:
            raise _MatchesNothing()
        clauses.append(f"array_contains_any(attribute_keys, [{', '.join(quote(key) for key in keys)}])")
    return " and ".join(clauses)


# ---- connecting ----

def connect(uri: str, *, token: str = "", timeout_s: float = 5.0):
    """A ``MilvusClient`` for ``uri``, or ``MilvusUnreachable`` with one sentence."""
    pymilvus = _milvus()
    try:
        # gRPC backs off reconnecting up to 120 s by default: after a long outage the service
        # would stay unready for minutes after Milvus is back. 2 s at most keeps recovery prompt.
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout_s, grpc_options=RECONNECT)
    except _backend_errors() + (OSError, ValueError) as exc:
        raise MilvusUnreachable(f"Milvus at {uri} cannot be reached ({_reason(exc)}); start it, "
                                "or point HLM_MILVUS_URI at a running Milvus.") from None


class MilvusIndex:
    """A pushed collection, opened for serving (both sides of ``retrieval.base.VectorIndex``)."""

    backend = "milvus"

    def __init__(self, uri: str, collection: str, *, dim: int, artifact_sha256: Optional[str], ef: int = 64,
                 token: str = "", timeout_s: float = 2.0, client: Any = None):
        self.uri, self.collection, self.dim = uri, collection, int(dim)
        self.artifact_sha256 = artifact_sha256
        self.default_ef = int(ef)
        self.timeout_s = timeout_s
        self._errors = _backend_errors()
        self.client = client or connect(uri, token=token, timeout_s=timeout_s)
        self._healthy = True
        self._health_lock = threading.Lock()
        try:
            exists = self.client.has_collection(collection, timeout=timeout_s)
            if exists:
                self._load(max(timeout_s, LOAD_AT_START_S))
        except self._errors as exc:
            raise MilvusUnreachable(f"Milvus at {uri} does not answer ({_reason(exc)}).") from None
        if not exists:
            raise ValueError(f"Milvus at {uri} has no collection {collection!r}; "
                             f"run `hlm index push ARTIFACT --uri {uri} --collection {collection}` first")

    # ---- health ----

    def _call(self, fn: Callable, *args, **kwargs):
        """One call to Milvus; a backend failure becomes IndexUnavailable (one sentence).

        A collection found released (the server restarted) is loaded again and the call
        retried once: that is how the index recovers by itself.
        """
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            try:
                result = fn(*args, **kwargs)
            except self._errors as exc:
                if not _not_loaded(exc):
                    raise
                self._load()
                result = fn(*args, **kwargs)
        except self._errors as exc:
            self._set_health(False, exc)
            raise IndexUnavailable(f"The keyword index (Milvus at {self.uri}) is unavailable: {_reason(exc)}.") from None
        self._set_health(True)
        return result

    def _load(self, timeout_s: Optional[float] = None) -> None:
        """Load the collection, waiting ``timeout_s`` (default: the call timeout). A call that
        finds it released runs in the encoder's batch thread: waiting 30 s there held every
        query of that encoder, whatever HLM_MILVUS_TIMEOUT_S said (#28 finding 12). Milvus goes
        on loading after the client stops waiting; the readiness probe (``healthy``) and
        start-up wait longer, off the query path."""
        self.client.load_collection(self.collection, timeout=self.timeout_s if timeout_s is None else timeout_s)

    def _set_health(self, ok: bool, exc: Optional[BaseException] = None) -> None:
        with self._health_lock:
            changed, self._healthy = ok != self._healthy, ok
        if changed and ok:
            log.warning("Milvus at %s answers again", self.uri)
        elif changed:
            log.error("Milvus at %s is unavailable: %s", self.uri, _reason(exc) if exc else "")

    def healthy(self) -> bool:
        """One cheap round trip (the load state); loads the collection again if it was released."""
        try:
            state = self._call(self.client.get_load_state, self.collection).get("state")
            if getattr(state, "name", str(state)) != "Loaded":
                self._call(self.client.load_collection, self.collection, timeout=max(self.timeout_s, LOAD_AT_START_S))
        except IndexUnavailable:
            return False
        return True

    # ---- read side ----

    def __len__(self) -> int:
        rows = self._call(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def properties(self) -> tuple[dict[str, str], dict]:
        desc = self._call(self.client.describe_collection, self.collection)
        return dict(desc.get("properties") or {}), desc

    def verify(self) -> None:
        """The collection was pushed, completely, from this artifact, with vectors of our dim."""
        props, desc = self.properties()
        recorded = props.get(SHA_PROPERTY)
        where = f"collection {self.collection!r} at {self.uri}"
        if recorded is None:
            raise ValueError(f"{where} records no artifact sha256: it was not made by `hlm index push`")
        if self.artifact_sha256 and recorded != self.artifact_sha256:
            raise ValueError(f"{where} was pushed from artifact {recorded[:12]}…, not from the loaded artifact "
                             f"{self.artifact_sha256[:12]}…; push this artifact to it (`hlm index push --replace`) "
                             "or set HLM_MILVUS_COLLECTION to its own collection")
        if props.get(STATE_PROPERTY) != "complete":
            raise ValueError(f"{where} is incomplete (its push did not finish); run `hlm index push` again")
        field_dim = next((int(f.get("params", {}).get("dim", 0)) for f in desc.get("fields", []) if f.get("name") == "vector"), 0)
        if field_dim != self.dim:
            raise ValueError(f"{where} holds {field_dim}-d vectors but the artifact's encoders output {self.dim}-d vectors")

    def search(self, vectors: np.ndarray, params: SearchParams) -> list[list[Hit]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], not {list(vectors.shape)}")
        if not len(vectors) or params.k <= 0:
            return [[] for _ in range(len(vectors))]
        try:
            expr = filter_expression(params.filter)
        except _MatchesNothing:
            return [[] for _ in range(len(vectors))]
        ef = max(params.ef or self.default_ef, params.k)  # HNSW needs ef >= k, as hnswlib
        result = self._call(
            self.client.search, self.collection, data=vectors.tolist(), limit=params.k,
            filter=expr or "", anns_field="vector", output_fields=["text"],
            search_params={"metric_type": SPACE.upper(), "params": {"ef": ef}},
        )
        return [[Hit(str(h["id"]), h["entity"]["text"], float(h["distance"])) for h in row] for row in result]

    def get(self, keyword_id: str) -> Optional[tuple[str, dict]]:
        """(text, attributes) of a keyword, None if absent (as ``HnswIndex.get``)."""
        rows = self._call(self.client.get, self.collection, ids=[str(keyword_id)], output_fields=["text", "attributes"])
        return (rows[0]["text"], dict(rows[0].get("attributes") or {})) if rows else None

    # ---- write side (one writer at a time, as the protocol says) ----

    def check_rows(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict]) -> None:
        """ValueError unless ``upsert`` would take these rows (no call to Milvus): the live
        writer asks before it logs a change, so the log never holds one Milvus then refuses."""
        keyword_rows(ids, vectors, texts, attributes, self.dim)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict]) -> None:
        rows = keyword_rows(ids, vectors, texts, attributes, self.dim)
        if rows:
            self._call(self.client.upsert, self.collection, rows)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete the keywords among ``ids`` that exist; return how many did."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not ids:
            return 0
        found = self._call(self.client.get, self.collection, ids=ids, output_fields=["id"])
        present = [row["id"] for row in found]
        if present:
            self._call(self.client.delete, self.collection, ids=present)
        return len(present)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection has nothing to report
            pass


def keyword_rows(ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], attributes: Sequence[dict],
                 dim: int) -> list[dict]:
    vectors = np.asarray(vectors, dtype=np.float32)
    if not (len(ids) == len(vectors) == len(texts) == len(attributes)):
        raise ValueError("ids, vectors, texts and attributes must have one entry per keyword")
    if len(ids) and (vectors.ndim != 2 or vectors.shape[1] != dim):
        raise ValueError(f"keyword vectors must be [n, {dim}], not {list(vectors.shape)}")
    rows = []
    for kid, vec, text, attrs in zip(ids, vectors, texts, attributes):
        if not isinstance(kid, str) or not kid or len(kid.encode()) > ID_MAX:
            raise ValueError(f"keyword id {kid!r} must be a non-empty string of at most {ID_MAX} bytes")
        attrs = dict(attrs or {})
        rows.append({"id": kid, "vector": vec.tolist(), "text": str(text)[:TEXT_MAX // 4],
                     "attributes": attrs, "attribute_keys": attribute_keys(attrs)})
    return rows


# ---- pushing an artifact (`hlm index push`) ----

def read_artifact_keywords(root: Path, manifest: dict) -> tuple[list[str], list[str], np.ndarray]:
    """ids and texts from the store, the teacher vectors from the artifact's hnswlib graph."""
    import hnswlib

    idx = manifest["index"]
    ids, texts = read_store(root / idx["store"])
    graph = hnswlib.Index(space=SPACE, dim=int(idx["dim"]))
    graph.load_index(str(root / idx["path"]), max_elements=len(ids))
    vectors = np.asarray(graph.get_items(list(range(len(ids)))), dtype=np.float32) if ids else np.zeros((0, int(idx["dim"])), np.float32)
    return ids, texts, vectors


def read_artifact_attributes(root: Path, manifest: dict, ids: Sequence[str]) -> list[dict]:
    """The artifact's attributes file when its manifest names one, else what the build derives
    from each id (its source), as the hnswlib backend reads them."""
    from retrieval.hnsw import build_attributes, read_attributes

    path = (manifest.get("index") or {}).get("attributes")
    return read_attributes(root / path, len(ids)) if path else [build_attributes(i) for i in ids]


def _schema(pymilvus, dim: int):
    DataType = pymilvus.DataType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
    schema.add_field("attributes", DataType.JSON)
    schema.add_field("attribute_keys", DataType.ARRAY, element_type=DataType.VARCHAR,
                     max_capacity=MAX_ATTRIBUTES, max_length=KEY_MAX)
    return schema


class PushRefused(Exception):
    """`hlm index push` will not touch the collection; the message says why and what to do."""


def push_artifact(artifact: Path, uri: str, collection: str = DEFAULT_COLLECTION, *, replace: bool = False,
                  batch: int = 256, token: str = "", timeout_s: float = 30.0,
                  progress: Optional[Callable[[int, int], None]] = None) -> str:
    """Create ``collection`` from ``artifact``'s keywords; return what was done, in a sentence.

    Idempotent: a complete collection from the same artifact is left alone; one from another
    artifact (or not made by this command) is refused unless ``replace``; an incomplete one
    (an earlier push was killed) is pushed again.
    """
    root = Path(artifact)
    manifest = verify_artifact(root)
    sha, idx = manifest["artifact_sha256"], manifest["index"]
    dim = int(idx["dim"])
    pymilvus = _milvus()
    client = connect(uri, token=token, timeout_s=timeout_s)
    errors = _backend_errors()
    try:
        if client.has_collection(collection):
            props = dict(client.describe_collection(collection).get("properties") or {})
            recorded = props.get(SHA_PROPERTY)
            if recorded == sha and props.get(STATE_PROPERTY) == "complete":
                return f"collection {collection!r} at {uri} already holds artifact {sha[:12]}…; nothing to do"
            if recorded not in (None, sha) and not replace:
                raise PushRefused(f"collection {collection!r} at {uri} holds artifact {recorded[:12]}…, not {sha[:12]}…; "
                                  "pass --replace to overwrite it, or push to another --collection")
            if recorded is None and not replace:
                raise PushRefused(f"collection {collection!r} at {uri} was not made by `hlm index push`; "
                                  "pass --replace to overwrite it, or push to another --collection")
            client.drop_collection(collection)
        ids, texts, vectors = read_artifact_keywords(root, manifest)
        properties = {SHA_PROPERTY: sha, DIM_PROPERTY: str(dim), STATE_PROPERTY: "loading"}
        client.create_collection(collection, schema=_schema(pymilvus, dim), properties=properties,
                                 description=f"hlm keywords of artifact {sha}")
        attrs = read_artifact_attributes(root, manifest, ids)
        done = 0
        for start in range(0, len(ids), batch):
            end = min(start + batch, len(ids))
            client.insert(collection, keyword_rows(ids[start:end], vectors[start:end], texts[start:end],
                                                   attrs[start:end], dim))
            done = end
            if progress:
                progress(done, len(ids))
        client.flush(collection)
        # The index is built after the bulk insert, as Milvus recommends for a first load.
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type="HNSW", metric_type=SPACE.upper(),
                               params={"M": int(idx.get("M") or 32), "efConstruction": int(idx.get("ef_construction") or 200)})
        client.create_index(collection, index_params)
        client.load_collection(collection)
        count = int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if count != len(ids):
            raise PushRefused(f"collection {collection!r} holds {count} keywords after the push, not {len(ids)}; run it again")
        client.alter_collection_properties(collection, properties={STATE_PROPERTY: "complete"})
        return f"pushed {len(ids)} keywords of artifact {sha[:12]}… to collection {collection!r} at {uri}"
    except errors as exc:
        raise MilvusUnreachable(f"Milvus at {uri} failed during the push ({_reason(exc)}); run it again") from None
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


# ---- agreement with exact search and with the hnswlib backend (`hlm index agreement`) ----

def measure_agreement(milvus: "MilvusIndex", hnsw: Any, ids: Sequence[str], keyword_vectors: np.ndarray,
                      queries: np.ndarray, *, k: int = 10, efs: Sequence[int] = (64,), latency_queries: int = 200,
                      rounds: int = 3) -> list[dict]:
    """Per ef: Milvus' recall@k against exact search, its overlap@k with hnswlib's top-k (same
    vectors, same ef), and the median time per query of each, batch 1 (the service's student
    path), the best of ``rounds`` passes over the first ``latency_queries`` queries."""
    from retrieval.exact import exact_top_k, recall_at_k

    truth = [[ids[label] for label in row] for row in exact_top_k(keyword_vectors, queries, k).tolist()]
    timed = queries[:latency_queries]
    out = []
    for ef in efs:
        params = SearchParams(k=k, ef=ef)
        found_m = [[h.id for h in row] for row in milvus.search(queries, params)]
        found_h = [[h.id for h in row] for row in hnsw.search(queries, params)]
        overlap = sum(len(set(a) & set(b)) for a, b in zip(found_m, found_h)) / max(1, sum(len(b) for b in found_h))
        per_query = {}
        for name, index in (("milvus", milvus), ("hnswlib", hnsw)):
            best = []
            for _ in range(rounds):
                times = []
                for q in timed:
                    t0 = time.perf_counter()
                    index.search(q[None], params)
                    times.append(time.perf_counter() - t0)
                best.append(float(np.median(times)))
            per_query[name] = min(best) * 1000.0
        out.append({"ef": ef, "k": k, "queries": len(queries),
                    "recall_milvus": recall_at_k(found_m, truth), "recall_hnswlib": recall_at_k(found_h, truth),
                    "overlap_milvus_hnswlib": overlap,
                    "ms_per_query_milvus": per_query["milvus"], "ms_per_query_hnswlib": per_query["hnswlib"],
                    "added_ms_per_query": per_query["milvus"] - per_query["hnswlib"]})
    return out
