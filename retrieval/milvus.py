"""The distributed keyword index: a Milvus collection behind ``retrieval.base.VectorIndex``.

For keyword sets larger than one machine's memory (docs/SCALE.md). The same code talks to a
Milvus cluster (``http://host:19530``), to a local ``milvus-lite server`` and to an embedded
milvus-lite file (a URI ending in ``.db``): pymilvus' ``MilvusClient`` takes all three.

One collection holds one artifact's keywords::

    id              VARCHAR primary key    the keyword store's id ("hd:100001")
    vector          FLOAT_VECTOR(dim)      the teacher's L2-normalised vector, metric IP; HNSW (the
                                           artifact's M, efConstruction) unless `hlm index push
                                           --index-type` asks for another (INDEX_TYPES)
    text            VARCHAR                what a hit shows
    attributes      JSON                   the attributes as given ({"source": "hd", ...})
    attribute_keys  ARRAY<VARCHAR>         one typed key per attribute: what filters run on

Filters run on a scalar array of typed keys, ``["source","s","hd"]`` (name, type, value as
canonical JSON), not on JSON paths, for three reasons: equality then means exactly what it
means in the hnswlib backend (``retrieval.keyword_table.value_key``: True is not 1, 1 is 1.0, "1" is
not 1; comparing JSON paths, milvus-lite takes True == 1); live upserts may bring attribute
names no schema knew, which an array takes without a schema change (one scalar field per
attribute would need one); and each attribute of a filter is one ``array_contains_any``, which
a cluster can serve from an inverted index on the array. The JSON field keeps the attributes
for reading back.

The collection records the artifact's sha256 and the vector dimension in its properties (and
in its description, for people): the service refuses a collection pushed from another
artifact, whose vectors would come from another teacher. It also records the index it was
pushed with (an IVF index is searched with nprobe, an HNSW graph with ef).

Start-up waits for Milvus to load the collection (``MilvusIndex.wait_loaded``): the load is
requested, its state polled and logged, for at most HLM_MILVUS_LOAD_TIMEOUT_S; a Milvus that
has just started answers only once it has opened its collections, so start-up's calls have
their own bound, not HLM_MILVUS_TIMEOUT_S's (issue #24).
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
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
# The vector index `hlm index push` asked for, as JSON {"index_type", "params"}: Milvus'
# describe_index does not always return the build parameters (milvus-lite drops them), and an
# IVF index's default nprobe follows its nlist.
INDEX_PROPERTY = "hlm.index"
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
# Start-up: how long a call other than the load may take (a Milvus that has just started opens
# its collections before it answers), how long the collection may take to load by default
# (HLM_MILVUS_LOAD_TIMEOUT_S), how often its state is asked for and how often it is logged.
START_CALL_S = 30.0
LOAD_TIMEOUT_S = 1800.0
LOAD_POLL_S = 1.0
LOAD_LOG_EVERY_S = 5.0
# pymilvus logs every failed RPC, and every failed reconnection, with its traceback: while
# Milvus is down that is two tracebacks per query. This module logs one line per change of
# health instead. (Set after pymilvus is imported: its logging.config call resets children.)
_QUIET = {"pymilvus.decorators": logging.CRITICAL, "pymilvus.client.connection_manager": logging.ERROR}


# Not "grpc.min_reconnect_backoff_ms": gRPC core takes it as the least time a connection attempt
# is given to complete its handshake (default 20 s), not as a backoff. At 200 ms a Milvus that
# took longer to answer the handshake (busy opening its collections, a loaded machine, a
# remote cluster) was "cannot be reached" at start-up, and every reconnection was cut as short.
RECONNECT = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 2000}
# pymilvus pings every 10 s. A gRPC server left at gRPC's defaults (milvus-lite's) takes a ping
# less than 5 min after the last as a strike and, at the third, ends the connection with GOAWAY
# "too_many_pings": every call in flight fails UNAVAILABLE, pymilvus re-sends it, and a call
# that runs longer than ~30 s (building or loading the index of 113k keywords) never ends (a
# re-sent create_index finds the index made; a re-sent load waits behind the first). Every call
# here has a deadline, which is what notices a dead Milvus; the pings add nothing to it.
KEEPALIVE = {"grpc.keepalive_time_ms": 300_000 + 10_000, "grpc.keepalive_permit_without_calls": False}
GRPC_OPTIONS = RECONNECT | KEEPALIVE


class MilvusUnreachable(IndexUnavailable):
    """Milvus could not be reached when the index was opened (start-up): one sentence."""


class MilvusNotLoaded(IndexUnavailable):
    """Start-up: the collection did not load in time, or Milvus could not load it: one sentence."""


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
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError: its str() is a multi-line repr
        try:
            return f"{getattr(code(), 'name', code())}: {details() or ''}".strip().rstrip(":.")[:200]
        except Exception:  # noqa: BLE001 - a future without a status yet
            pass
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
    backend (``retrieval.keyword_table.value_key``): a boolean is not a number, 1 and 1.0 are one number."""
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

def _listening(uri: str, timeout_s: float) -> Optional[str]:
    """None when something accepts TCP connections at ``uri``'s host and port (or the URI names
    no network address: a local .db file), else why not."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "tcp", "grpc") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 19530)
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        return exc.strerror or str(exc) or exc.__class__.__name__
    return None


def connect(uri: str, *, token: str = "", timeout_s: float = 5.0, patience_s: Optional[float] = None):
    """A ``MilvusClient`` for ``uri``, or ``MilvusUnreachable`` with one sentence.

    ``patience_s`` (start-up): how long a Milvus that accepts connections may take to answer
    (a server that has just started, busy opening its collections); nothing listening is still
    said within ``timeout_s``."""
    pymilvus = _milvus()
    wait_s = timeout_s
    if patience_s is not None:
        refused = _listening(uri, timeout_s)
        if refused is not None:
            raise MilvusUnreachable(f"Milvus at {uri} cannot be reached ({refused}); start it, "
                                    "or point HLM_MILVUS_URI at a running Milvus.")
        wait_s = max(timeout_s, patience_s)
    try:
        # gRPC backs off reconnecting up to 120 s by default: after a long outage the service
        # would stay unready for minutes after Milvus is back. 2 s at most keeps recovery prompt.
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=wait_s, grpc_options=GRPC_OPTIONS)
    except _backend_errors() + (OSError, ValueError) as exc:
        raise MilvusUnreachable(f"Milvus at {uri} cannot be reached ({_reason(exc)}); start it, "
                                "or point HLM_MILVUS_URI at a running Milvus.") from None


class MilvusIndex:
    """A pushed collection, opened for serving (both sides of ``retrieval.base.VectorIndex``)."""

    backend = "milvus"

    def __init__(self, uri: str, collection: str, *, dim: int, artifact_sha256: Optional[str], ef: int = 64,
                 token: str = "", timeout_s: float = 2.0, client: Any = None,
                 load_timeout_s: float = LOAD_TIMEOUT_S, nprobe: Optional[int] = None,
                 logger: Optional[logging.Logger] = None):
        """Open ``collection`` and wait until Milvus has loaded it (``wait_loaded``), at most
        ``load_timeout_s``; ``timeout_s`` bounds each call while serving. ``logger``: where the
        start-up's progress goes (the service's own log; default this module's)."""
        self._log = logger or log
        self.uri, self.collection, self.dim = uri, collection, int(dim)
        self.artifact_sha256 = artifact_sha256
        self.default_ef = int(ef)
        self.timeout_s = timeout_s
        self._errors = _backend_errors()
        self._healthy = True
        self._health_lock = threading.Lock()
        self._loader: Optional[_LoadRequest] = None
        self._log.info("Milvus: opening collection %r at %s", collection, uri)
        self.client = client or connect(uri, token=token, timeout_s=timeout_s, patience_s=START_CALL_S)
        try:
            exists = self.client.has_collection(collection, timeout=max(timeout_s, START_CALL_S))
        except self._errors as exc:
            raise MilvusUnreachable(f"Milvus at {uri} does not answer ({_reason(exc)}).") from None
        if not exists:
            raise ValueError(f"Milvus at {uri} has no collection {collection!r}; "
                             f"run `hlm index push ARTIFACT --uri {uri} --collection {collection}` first")
        self.wait_loaded(load_timeout_s)
        self.index_type, self.index_params = self._describe_index()
        self.nprobe = int(nprobe or self._default_nprobe())

    # ---- loading ----

    def _load_state(self, timeout_s: float) -> tuple[str, Optional[int]]:
        """(state, progress %) of the collection: ``Loaded``, ``Loading`` (with its progress),
        ``NotLoad``; pymilvus' ``get_load_state``, one or two short calls."""
        answer = self.client.get_load_state(self.collection, timeout=timeout_s)
        state = answer.get("state")
        progress = answer.get("progress")
        return getattr(state, "name", str(state)), (None if progress is None else int(progress))

    def _request_load(self, timeout_s: float) -> "_LoadRequest":
        """The load asked for in its own thread (one at a time), waited on by nobody: a cluster
        answers at once and loads in its query nodes; milvus-lite answers once loaded."""
        with self._health_lock:
            if self._loader is None or self._loader.done():
                self._loader = _LoadRequest(self.client, self.collection, timeout_s)
            return self._loader

    def wait_loaded(self, timeout_s: float, *, poll_s: Optional[float] = None, every_s: Optional[float] = None) -> float:
        """Until the collection is loaded, at most ``timeout_s``: the load is requested, its
        state and progress asked for every ``poll_s`` with short calls and logged every
        ``every_s``. Returns the seconds waited; ``MilvusNotLoaded`` (one sentence) past
        ``timeout_s`` or when Milvus says it cannot load it, ``MilvusUnreachable`` when Milvus
        answers nothing at all.

        Why not one call: a collection loads in minutes at 10^5 keywords on milvus-lite (each
        segment's index is read back, or built when it was never saved) and longer on a
        cluster's query nodes. Inside one call of the start-up's 30 s the load outlived its
        deadline, and the service stopped with "Milvus ... does not answer" (issue #24).
        """
        poll_s = LOAD_POLL_S if poll_s is None else poll_s
        every_s = LOAD_LOG_EVERY_S if every_s is None else every_s
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        call_s = max(self.timeout_s, START_CALL_S)
        try:
            state, progress = self._load_state(call_s)
        except self._errors as exc:
            raise MilvusUnreachable(f"Milvus at {self.uri} does not answer ({_reason(exc)}).") from None
        if state == "Loaded":
            return 0.0
        where = f"collection {self.collection!r} at {self.uri}"
        self._log.info("Milvus: loading %s (state %s); waiting for it at most %g s (HLM_MILVUS_LOAD_TIMEOUT_S)",
                 where, state, timeout_s)
        request = self._request_load(timeout_s)
        next_log, last, pause = t0 + every_s, "", min(0.05, poll_s)
        while True:
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(2 * pause, poll_s)
            now = time.monotonic()
            try:
                state, progress = self._load_state(min(call_s, max(poll_s, deadline - now)))
            except self._errors as exc:  # busy loading, or restarting: said in the log, asked again
                state, progress = f"no answer ({_reason(exc)})", None
            if state == "Loaded":
                self._log.info("Milvus: %s loaded in %.1f s", where, now - t0)
                return now - t0
            last = state + ("" if progress is None else f", {progress}%")
            if state == "NotExist":  # dropped meanwhile (a push --replace)
                raise MilvusNotLoaded(f"Milvus no longer has {where}; run `hlm index push` again.")
            failure = request.failure()
            if failure is not None and state == "NotLoad":
                if not _transient(failure):  # Milvus answered that it cannot load it
                    raise MilvusNotLoaded(f"Milvus cannot load {where} ({_reason(failure)}).")
                request = self._request_load(max(1.0, deadline - now))  # it restarted, or the call was cut
            if now >= deadline:
                raise MilvusNotLoaded(
                    f"Milvus has not loaded {where} within {timeout_s:g} s (HLM_MILVUS_LOAD_TIMEOUT_S; last state: "
                    f"{last}); raise HLM_MILVUS_LOAD_TIMEOUT_S, or see why Milvus loads it slowly.")
            if now >= next_log:
                self._log.info("Milvus: %s %s after %.0f s (of at most %g s)", where, last, now - t0, timeout_s)
                next_log = now + every_s

    def _describe_index(self) -> tuple[str, dict]:
        """The index type on the vector field and its build parameters (HNSW when Milvus does not say)."""
        try:
            names = self.client.list_indexes(self.collection, field_name="vector", timeout=START_CALL_S)
            desc = self.client.describe_index(self.collection, names[0], timeout=START_CALL_S) if names else {}
            props, _ = self.properties(timeout_s=START_CALL_S)
        except self._errors as exc:
            raise MilvusUnreachable(f"Milvus at {self.uri} does not answer ({_reason(exc)}).") from None
        except IndexUnavailable as exc:
            raise MilvusUnreachable(str(exc)) from None
        kind = str(desc.get("index_type") or DEFAULT_INDEX_TYPE).upper()
        try:
            pushed = json.loads(props.get(INDEX_PROPERTY) or "{}")
        except ValueError:
            pushed = {}
        params = pushed.get("params") if pushed.get("index_type") == kind and isinstance(pushed.get("params"), dict) else {}
        if not params:
            given = desc.get("params") if isinstance(desc.get("params"), dict) else {}
            params = {k: v for k, v in {**desc, **given}.items() if k in ("M", "efConstruction", "nlist", "m", "nbits", "sq_type")}
        return kind, params

    def _default_nprobe(self) -> int:
        """IVF lists searched when HLM_MILVUS_NPROBE says nothing: 1/8 of nlist, at least 8 (on
        the demo artifact, nlist 438: nprobe 32 gave recall@10 0.92, 64 gave 0.97)."""
        nlist = int(self.index_params.get("nlist") or 128)
        return max(1, min(nlist, max(8, nlist // 8)))

    def search_params(self, ef: int) -> dict:
        """What Milvus' search takes for a breadth ``ef``: an HNSW graph's ef, an IVF index's
        nprobe (fixed: HLM_MILVUS_NPROBE), DISKANN's search_list."""
        name = INDEX_TYPES.get(self.index_type, INDEX_TYPES[DEFAULT_INDEX_TYPE])["search"]
        value = self.nprobe if name == "nprobe" else ef
        return {"metric_type": SPACE.upper(), "params": {name: int(value)}}

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
        """One cheap round trip (the load state). A collection found released (Milvus
        restarted) is asked to load again, in the background: not ready until it has."""
        try:
            state = self._call(self.client.get_load_state, self.collection).get("state")
        except IndexUnavailable:
            return False
        if getattr(state, "name", str(state)) == "Loaded":
            return True
        if getattr(state, "name", str(state)) != "Loading":
            self._request_load(LOAD_TIMEOUT_S)
        return False

    # ---- read side ----

    def __len__(self) -> int:
        rows = self._call(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def properties(self, timeout_s: Optional[float] = None) -> tuple[dict[str, str], dict]:
        desc = self._call(self.client.describe_collection, self.collection, timeout=timeout_s or self.timeout_s)
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
            filter=expr or "", anns_field="vector", output_fields=["text"], search_params=self.search_params(ef),
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


class _LoadRequest:
    """``load_collection`` in a daemon thread: its outcome, read by whoever polls the load state."""

    def __init__(self, client: Any, collection: str, timeout_s: float):
        self._failure: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(client, collection, timeout_s),
                                        name=f"milvus-load-{collection}", daemon=True)
        self._thread.start()

    def _run(self, client: Any, collection: str, timeout_s: float) -> None:
        try:
            client.load_collection(collection, timeout=timeout_s, _async=True)
        except Exception as exc:  # noqa: BLE001 - read by failure(); the load state is what counts
            self._failure = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def failure(self) -> Optional[BaseException]:
        return None if self._thread.is_alive() else self._failure


def _transient(exc: BaseException) -> bool:
    """A failure of the call (cut, timed out, Milvus gone), not Milvus' answer that it cannot load."""
    import grpc

    if isinstance(exc, (grpc.RpcError, grpc.FutureTimeoutError, ConnectionError, TimeoutError)):
        return True
    code = getattr(exc, "code", None)
    return isinstance(code, grpc.StatusCode) or "Retry timeout" in str(getattr(exc, "message", "") or exc)


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
    from retrieval.keyword_table import build_attributes, read_attributes

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


# The vector index types `hlm index push --index-type` asks Milvus for, and what each is built
# and searched with. Milvus (a cluster) offers all of them; milvus-lite 3.2 builds HNSW, HNSW_SQ
# (8-bit scalar codes in the graph), IVF_FLAT and IVF_SQ8 with faiss and refuses the others
# (IVF_PQ is reserved there; HNSW_PQ, DISKANN, IVF_RABITQ are unknown to it): the push says so
# in a sentence. ``search`` is the search parameter the service's breadth goes to: an HNSW
# graph's ef (a request's ef, as hnswlib), an IVF index's nprobe (HLM_MILVUS_NPROBE).
INDEX_TYPES = {
    "HNSW": {"build": ("M", "efConstruction"), "search": "ef"},
    "HNSW_SQ": {"build": ("M", "efConstruction", "sq_type"), "search": "ef"},
    "HNSW_PQ": {"build": ("M", "efConstruction", "m", "nbits"), "search": "ef"},
    "IVF_FLAT": {"build": ("nlist",), "search": "nprobe"},
    "IVF_SQ8": {"build": ("nlist",), "search": "nprobe"},
    "IVF_PQ": {"build": ("nlist", "m", "nbits"), "search": "nprobe"},
    "IVF_RABITQ": {"build": ("nlist",), "search": "nprobe"},
    "DISKANN": {"build": (), "search": "search_list"},
}
DEFAULT_INDEX_TYPE = "HNSW"


def index_build_params(index_type: str, count: int, dim: int, *, M: int = 32, ef_construction: int = 200,
                       nlist: Optional[int] = None, pq_m: Optional[int] = None) -> dict:
    """The build parameters of ``index_type`` for ``count`` keywords of ``dim`` dimensions.

    HNSW kinds take the artifact's graph (M, efConstruction); IVF kinds ``nlist`` lists
    (default 4 x sqrt(count), the usual rule, at least 1); PQ kinds ``pq_m`` sub-quantisers of
    8 bits (default dim / 8: 96 bytes a 768-d keyword, as the 1-bit codes of issue #24), which
    must divide ``dim``.
    """
    kind = index_type.upper()
    if kind not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    params: dict = {}
    if "M" in INDEX_TYPES[kind]["build"]:
        params.update(M=int(M), efConstruction=int(ef_construction))
    if "nlist" in INDEX_TYPES[kind]["build"]:
        params["nlist"] = int(nlist or max(1, round(4 * math.sqrt(max(count, 1)))))
    if "sq_type" in INDEX_TYPES[kind]["build"]:
        params["sq_type"] = "SQ8"
    if "m" in INDEX_TYPES[kind]["build"]:
        m = int(pq_m or max(1, dim // 8))
        if dim % m:
            raise ValueError(f"--pq-m {m} does not divide the vectors' {dim} dimensions")
        params.update(m=m, nbits=8)
    return params


def push_artifact(artifact: Path, uri: str, collection: str = DEFAULT_COLLECTION, *, replace: bool = False,
                  batch: int = 256, token: str = "", timeout_s: float = 30.0, index_type: str = DEFAULT_INDEX_TYPE,
                  nlist: Optional[int] = None, pq_m: Optional[int] = None,
                  progress: Optional[Callable[[int, int], None]] = None, timings: Optional[dict] = None) -> str:
    """Create ``collection`` from ``artifact``'s keywords; return what was done, in a sentence.

    Idempotent: a complete collection from the same artifact is left alone; one from another
    artifact (or not made by this command) is refused unless ``replace``; an incomplete one
    (an earlier push was killed) is pushed again.
    """
    root = Path(artifact)
    manifest = verify_artifact(root)
    idx = manifest["index"]

    def keywords():
        ids, texts, vectors = read_artifact_keywords(root, manifest)
        return ids, texts, vectors, read_artifact_attributes(root, manifest, ids)

    return push_keywords(keywords, uri, collection, sha=manifest["artifact_sha256"], dim=int(idx["dim"]),
                         replace=replace, batch=batch, token=token, timeout_s=timeout_s, index_type=index_type,
                         M=int(idx.get("M") or 32), ef_construction=int(idx.get("ef_construction") or 200),
                         nlist=nlist, pq_m=pq_m, progress=progress, timings=timings)


def _index_of(client, collection: str) -> Optional[str]:
    """The index type on the collection's vector field, None without one."""
    try:
        names = client.list_indexes(collection, field_name="vector")
        if not names:
            return None
        return str(client.describe_index(collection, names[0]).get("index_type") or "").upper() or None
    except _backend_errors():
        return None


def push_keywords(keywords: Callable[[], tuple[list[str], list[str], np.ndarray, list[dict]]], uri: str,
                  collection: str, *, sha: str, dim: int, replace: bool = False, batch: int = 256, token: str = "",
                  timeout_s: float = 30.0, index_type: str = DEFAULT_INDEX_TYPE, M: int = 32,
                  ef_construction: int = 200, nlist: Optional[int] = None, pq_m: Optional[int] = None,
                  progress: Optional[Callable[[int, int], None]] = None, timings: Optional[dict] = None) -> str:
    """The push itself, for any keyword set: ``keywords()`` gives (ids, texts, vectors,
    attributes), read only when the collection has to be (re)made; ``sha`` is what the
    collection records as its artifact. ``push_artifact`` is this on an artifact's keywords.
    ``timings``, when given, receives the seconds spent inserting (``insert_s``) and building
    and loading the index (``index_s``) when the collection is (re)made."""
    kind = index_type.upper()
    pymilvus = _milvus()
    client = connect(uri, token=token, timeout_s=timeout_s)
    errors = _backend_errors()
    try:
        if client.has_collection(collection):
            props = dict(client.describe_collection(collection).get("properties") or {})
            recorded = props.get(SHA_PROPERTY)
            if recorded == sha and props.get(STATE_PROPERTY) == "complete":
                held = _index_of(client, collection)
                if held in (None, kind) or replace:
                    if held in (None, kind):
                        return f"collection {collection!r} at {uri} already holds artifact {sha[:12]}…; nothing to do"
                else:
                    raise PushRefused(f"collection {collection!r} at {uri} holds artifact {sha[:12]}… indexed {held}, "
                                      f"not {kind}; pass --replace to rebuild it, or push to another --collection")
            if recorded not in (None, sha) and not replace:
                raise PushRefused(f"collection {collection!r} at {uri} holds artifact {recorded[:12]}…, not {sha[:12]}…; "
                                  "pass --replace to overwrite it, or push to another --collection")
            if recorded is None and not replace:
                raise PushRefused(f"collection {collection!r} at {uri} was not made by `hlm index push`; "
                                  "pass --replace to overwrite it, or push to another --collection")
            client.drop_collection(collection)
        ids, texts, vectors, attrs = keywords()
        params = index_build_params(kind, len(ids), dim, M=M, ef_construction=ef_construction, nlist=nlist, pq_m=pq_m)
        properties = {SHA_PROPERTY: sha, DIM_PROPERTY: str(dim), STATE_PROPERTY: "loading",
                      INDEX_PROPERTY: json.dumps({"index_type": kind, "params": params}, sort_keys=True)}
        client.create_collection(collection, schema=_schema(pymilvus, dim), properties=properties,
                                 description=f"hlm keywords of artifact {sha}")
        done, t0 = 0, time.perf_counter()
        for start in range(0, len(ids), batch):
            end = min(start + batch, len(ids))
            client.insert(collection, keyword_rows(ids[start:end], vectors[start:end], texts[start:end],
                                                   attrs[start:end], dim))
            done = end
            if progress:
                progress(done, len(ids))
        client.flush(collection)
        t1 = time.perf_counter()
        # The index is built after the bulk insert, as Milvus recommends for a first load.
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type=kind, metric_type=SPACE.upper(), params=params)
        try:
            client.create_index(collection, index_params)
            client.load_collection(collection)
            if timings is not None:
                timings.update(insert_s=t1 - t0, index_s=time.perf_counter() - t1, index_type=kind, params=params)
        except errors as exc:
            if isinstance(exc, pymilvus.exceptions.MilvusException) and _refuses_index(exc):
                raise PushRefused(f"Milvus at {uri} does not build index type {kind} ({_reason(exc)}); "
                                  f"choose another --index-type (default {DEFAULT_INDEX_TYPE})") from None
            raise
        count = int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if count != len(ids):
            raise PushRefused(f"collection {collection!r} holds {count} keywords after the push, not {len(ids)}; run it again")
        client.alter_collection_properties(collection, properties={STATE_PROPERTY: "complete"})
        return (f"pushed {len(ids)} keywords of artifact {sha[:12]}… to collection {collection!r} at {uri}"
                + ("" if kind == DEFAULT_INDEX_TYPE else f", index {kind} {json.dumps(params, sort_keys=True)}"))
    except errors as exc:
        raise MilvusUnreachable(f"Milvus at {uri} failed during the push ({_reason(exc)}); run it again") from None
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


def _refuses_index(exc: BaseException) -> bool:
    """Whether Milvus refused the index type or its parameters (not a failure to answer)."""
    text = str(getattr(exc, "message", "") or exc).lower()
    return any(word in text for word in ("index_type", "index type", "not implemented", "reserved", "not supported",
                                         "unsupported", "invalid index", "illegal"))


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
