"""The service's settings: one pydantic-settings object, read from ``HLM_*`` variables.

Every field can be set in the environment (``HLM_MAX_BATCH=8``) or passed to
``Settings(...)`` directly (tests, ``hlm serve`` options). Lists such as
``HLM_CORS_ORIGINS`` accept a comma-separated string or a JSON list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retrieval.length_prior import MAX_WEIGHT as MAX_LENGTH_PRIOR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HLM_", extra="ignore", frozen=True)

    # Where the artifact lives and where to listen.
    artifact_dir: Path = Field(Path("artifacts/demo"), description="Artifact folder (manifest.json inside).")
    artifact_sha256: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="Serve only the artifact whose manifest has this artifact_sha256 (start-up and reloads refuse "
        "another). --workers N sets it for a worker that replaces a dead one: it must serve what the others serve.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(
        1, ge=1, le=64,
        description="Worker processes on one port (service/workers.py, SO_REUSEPORT): one per core serves both cores; each loads "
        "the artifact (memory x N). More than 1 refuses HLM_STATE_DIR (live writes need one index).")

    # Search parameters a request may choose, and their bounds.
    default_k: int = Field(10, ge=1, description="k when a request names none.")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    length_prior: float = Field(0.0, ge=0.0, le=MAX_LENGTH_PRIOR,
                                description="A search's length prior when it names none: its "
                                "ef candidates re-ranked by cosine + weight * ln(words of the keyword); 0 = off. "
                                "0.02 removed the student's pull to short keywords on the full index (docs/RESULTS.md).")
    ef: Optional[int] = Field(None, ge=1, description="HNSW ef when a request names none; default: the manifest's index.ef.")
    max_ef: int = Field(1000, ge=1, description="Largest ef a request may ask for.")

    # Where the keyword vectors live: the artifact's hnswlib graph in this process (default), or a
    # Milvus collection pushed from the same artifact by `hlm index push` (docs/SCALE.md).
    index_backend: Literal["hnswlib", "milvus"] = Field("hnswlib", description="Keyword index backend.")
    milvus_uri: Optional[str] = Field(
        None, description="Milvus URI (http://host:19530, or a milvus-lite file ending in .db); needed when index_backend=milvus.")
    milvus_collection: str = Field("hlm_keywords", min_length=1, description="The collection `hlm index push` created.")
    milvus_ef: Optional[int] = Field(None, ge=1, description="HNSW ef on Milvus when a request names none; default: as hnswlib (ef, then the manifest's).")
    milvus_token: Optional[SecretStr] = Field(None, description="Milvus token (user:password) if the cluster needs one.")
    milvus_timeout_s: float = Field(
        1.0, gt=0.0, le=60.0,
        description="Bound of one Milvus call while serving; past it the query gets 503 + Retry-After, not a hung request.")
    milvus_load_timeout_s: float = Field(
        1800.0, gt=0.0, le=86400.0,
        description="How long start-up waits for Milvus to load the collection (its state and progress are logged every "
        "few seconds; /healthz answers and /readyz says loading meanwhile); past it start-up stops with one sentence.")
    milvus_nprobe: Optional[int] = Field(
        None, ge=1, le=65536,
        description="IVF lists searched on a collection pushed with an IVF index type (`hlm index push --index-type "
        "IVF_SQ8`); default 1/8 of its nlist, at least 8. HNSW collections use ef instead.")

    # Micro-batching, one worker per encoder.
    max_batch: int = Field(16, ge=1, le=1024, description="Most queries one student batch holds.")
    teacher_max_batch: Optional[int] = Field(None, ge=1, le=1024, description="Most queries one teacher batch holds; default max_batch.")
    max_wait_ms: float = Field(
        0.0, ge=0.0, le=100.0,
        description="How long a worker waits for more requests after the first; 0 = take what is queued (batches form under load).",
    )
    exact_batches: bool = Field(
        True,
        description="Run int8 models one query at a time inside a batch: dynamic int8 quantisation scales "
        "activations over the whole batch, so batching them together changes answers (cosine ~0.996 to the "
        "query alone). False: one ONNX call per batch, more throughput at saturation, answers depend on the batch.",
    )
    queue_size: int = Field(256, ge=1, description="Bound of each encoder's queue, in requests; past it requests get 429.")
    slo_ms: float = Field(
        15.0, gt=0.0,
        description="The student's latency objective (server-side p99). Its waiting budget is this minus the measured "
        "time a served request spends outside the queue (mean + 3 deviations), so the budget shrinks when the event "
        "loop is saturated (open-loop overload) and grows back at ordinary concurrency (docs/RELIABILITY.md).",
    )
    teacher_slo_ms: float = Field(
        100.0, gt=0.0,
        description="The same for the teacher: one query costs it 25-50 ms on 2 cores, so it cannot meet the student's SLO.",
    )
    max_queue_wait_ms: Optional[float] = Field(
        None, ge=0.0,
        description="A fixed waiting budget for the student instead of the SLO-derived one: a request is refused at "
        "once (429) when the work the fair queue would run before it (the rest of the running batch included) takes "
        "longer. 0 = only the queue_size bound.",
    )
    teacher_max_queue_wait_ms: Optional[float] = Field(
        None, ge=0.0, description="A fixed waiting budget for the teacher; None = derived from teacher_slo_ms.",
    )
    max_batch_tokens: int = Field(
        256, ge=1,
        description="Most tokens (padded: queries x the longest) in one student batch; a request is cut into parts "
        "within max_batch and this, so other clients' queries run between its parts (2 long queries: ~50 ms).",
    )
    teacher_max_batch_tokens: int = Field(
        512, ge=1, description="The same for the teacher (it runs a batch as one padded tensor: this bounds its memory).",
    )
    max_request_ms: float = Field(
        400.0, ge=0.0,
        description="A student request whose own estimated encoder time (tokens x measured cost) is longer is refused "
        "up front (413 too_large): 64 short queries cost ~110 ms, 64 x 4,000 characters ~1.3 s. 0 = no bound.",
    )
    teacher_max_request_ms: float = Field(3000.0, ge=0.0, description="The same for the teacher (64 x 4,000 characters: 20-26 s).")
    client_id_header: Optional[str] = Field(
        None,
        description="Header naming the client for fair queueing (set it only behind a proxy that sets it); "
        "unset: the peer address.",
    )
    refusal_hold_ms: float = Field(
        16.0, ge=0.0, le=5000.0,
        description="The longest hold of a request sent on a connection the moment (within 2 ms) after a refusal on it: "
        "it is read after 1 ms, doubling with each hold in a row up to this (a timer, no CPU), then judged as any other, "
        "so a client that re-sends at once (a closed loop) cannot fill the event loop with refusals; every refusal "
        "itself is answered at once (service/loopgate.py). 0 = never hold.",
    )
    retry_gap_ms: float = Field(
        2.0, ge=0.0, le=1000.0,
        description="A request read on a connection within this long after a refusal was written on it counts as "
        "re-sent at once (held, see HLM_REFUSAL_HOLD_MS).",
    )
    loop_budget_ms: Optional[float] = Field(
        None, ge=0.0,
        description="How long a search answered on the event loop (an inline encoder) may have waited there before it "
        "is refused (429 budget) when its client has other requests waiting; None = a third of HLM_SLO_MS.",
    )
    max_in_flight: Optional[int] = Field(
        None, ge=0, le=100_000,
        description="Most requests each encoder carries at once (admitted at the edge, not yet answered); past it a "
        "client that already has one in flight gets 429 (code concurrency). None = derived: the encoder's measured "
        "rate x 0.35 x its SLO (service/concurrency.py); 0 = no limit.",
    )
    retry_after_s: int = Field(1, ge=1, description="Least Retry-After on 429/503 answers (else the expected wait, rounded up).")
    inline_encode_us: float = Field(
        250.0, ge=0.0,
        description="An encoder whose answers do not depend on batch-mates and whose one-query encode (measured at "
        "start) costs at most this many microseconds answers /v1/search on the event loop, without the hand-off to "
        "its batch worker (the static student: ~30 us; the hand-off costs more). 0 = always the batch worker.",
    )

    # ONNX Runtime.
    threads: int = Field(1, ge=1, le=64, description="Intra-op threads per ONNX Runtime session (1 was fastest on 2 cores).")
    student_precision: Optional[Literal["int8", "fp32"]] = Field(
        None, description="Student model to serve; default the manifest's encoders.student.default_precision."
    )
    provider: Literal["auto", "cpu", "cuda"] = Field("auto", description="ONNX Runtime execution provider.")
    # Shadow comparison of the student against the teacher, off the hot path.
    shadow_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of student requests re-run through the teacher.")

    # Request limits.
    max_queries: int = Field(64, ge=1, description="Most queries in one request.")
    max_query_chars: int = Field(
        20000, ge=1,
        description="Longest query in characters (longer: 422). Queries past the model's token limit are still "
        "answered, truncated, with `truncated: true`.",
    )
    max_body_bytes: int = Field(256 * 1024, ge=64, description="Largest request body (larger: 413).")

    # Access control.
    admin_token: Optional[SecretStr] = Field(
        None,
        description="When set, /metrics and /v1/info need 'Authorization: Bearer <token>', and the admin routes "
        "(POST /admin/reload) exist; unset, the admin routes answer 404.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Allowed CORS origins; none by default.")

    # Start-up.
    verify_checksums: bool = Field(True, description="Check every artifact file's sha256 at start-up and on reload.")
    reload_on_sighup: bool = Field(True, description="SIGHUP reloads HLM_ARTIFACT_DIR in the background (as POST /admin/reload).")
    warmup_rounds: int = Field(3, ge=0, le=100, description="Warm-up calls per encoder before /readyz turns green.")
    warmup_delay_s: float = Field(0.0, ge=0.0, description="Test hook: sleep this long before warm-up.")
    # Connection bounds (service/server.py; uvicorn alone has none for headers or bodies).
    max_header_bytes: int = Field(16384, ge=1024, description="Largest request head (request line + headers): larger gets 431.")
    header_timeout_s: float = Field(10.0, gt=0.0, description="Time from a request's first byte to its last header line: past it 408, closed.")
    body_timeout_s: float = Field(20.0, gt=0.0, description="Time to receive a whole request body: past it 408, closed.")
    keep_alive_s: float = Field(5.0, gt=0.0, description="An idle keep-alive connection is closed after this.")
    max_connections: int = Field(1024, ge=1, description="Open connections at most; one more is answered 503 and closed.")
    log_level: str = "info"
    access_log: bool = False

    # Live keywords (POST /admin/keywords) and the result cache.
    state_dir: Optional[Path] = Field(
        None,
        description="Folder of the live keyword changes (write-ahead log + snapshots), created if missing. Unset: "
        "live keyword changes are refused (409): an acknowledged change must survive a restart, and a default "
        "beside the artifact would make every test and tool that starts a server share one state.",
    )
    max_keyword_items: int = Field(256, ge=1, description="Most upserts + deletes in one POST /admin/keywords (more: 413).")
    max_keyword_chars: int = Field(1000, ge=1, description="Longest keyword text in characters (longer: 422).")
    max_attributes: int = Field(16, ge=1, le=256, description="Most attributes per keyword, and per filter.")
    ingest_queue_size: int = Field(64, ge=1, description="Keyword changes waiting for the ingest thread; past it: 429.")
    index_double_buffer: bool = Field(
        False, description="With live keywords on: keep a second copy of the hnswlib graph, write each change into "
        "the copy no search reads and swap, so searches never wait for a write, at twice the graph's memory and "
        "write CPU. Off by default: one graph with each add taken alone measured as well (query p99 12.4 vs 16.3 "
        "ms beside a 16-keyword change every 0.5 s, docs/BENCHMARKS.md).",
    )
    ingest_niceness: int = Field(10, ge=0, le=19, description="How much nicer than the process the thread encoding new "
                                 "keywords runs (Linux: per thread), so queries keep the cores.")
    snapshot_every: int = Field(1000, ge=1, description="Live changes logged between two snapshots (the log is emptied at each).")
    snapshot_log_bytes: int = Field(64 << 20, ge=1024, description="A log this large also triggers a snapshot.")
    result_cache_bytes: int = Field(
        0, ge=0,
        description="Bound in bytes of the head-query result cache ((query, k, ef, encoder, filter) -> results); "
        "0 = off. Off by default: the load tests compare the encoders and would measure the cache instead.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("admin_token")
    @classmethod
    def _usable_token(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        # A set but empty token used to mean "no auth" (an unset compose variable or an empty
        # Kubernetes secret opened /admin/*), and one with spaces at its ends "nobody": HTTP
        # strips them from the Authorization header, so no request could carry it. Refuse both.
        if value is None:
            return value
        token = value.get_secret_value()
        if not token.strip():
            raise ValueError("HLM_ADMIN_TOKEN is set but empty or only whitespace; set a real token, or unset it to "
                             "serve without the admin routes")
        if token != token.strip() or not all(" " <= c <= "~" for c in token):
            raise ValueError("HLM_ADMIN_TOKEN must be printable ASCII without whitespace at its ends (HTTP strips "
                             "it, so no request could carry such a token)")
        return value

    @model_validator(mode="after")
    def _check_bounds(self):
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) is larger than max_k ({self.max_k}).")
        if self.ef is not None and self.ef > self.max_ef:
            raise ValueError(f"ef ({self.ef}) is larger than max_ef ({self.max_ef}).")
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError("index_backend=milvus needs milvus_uri (HLM_MILVUS_URI).")
        return self

    @property
    def teacher_batch(self) -> int:
        return self.teacher_max_batch or self.max_batch

    @property
    def teacher_queue_wait_ms(self) -> Optional[float]:
        return self.teacher_max_queue_wait_ms


def describe_invalid(exc: Exception) -> str:
    """One sentence for settings that do not validate, naming the variables and never their
    values (pydantic's own text repeats the input, which for HLM_ADMIN_TOKEN is the secret)."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc).rstrip(".") + "."
    parts = []
    for error in errors(include_url=False, include_input=False, include_context=False):
        message = str(error["msg"]).removeprefix("Value error, ").rstrip(".")
        field = ".".join(str(part) for part in error["loc"])
        parts.append(message if not field or "HLM_" in message else f"HLM_{field.upper()}: {message}")
    return "; ".join(parts) + "."
