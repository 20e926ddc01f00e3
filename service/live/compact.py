"""``hlm compact``: fold the live keyword changes into a new artifact folder.

Reads the state folder without taking it (the service may be running and holding it): the
latest snapshot, then the log's whole records after it, again if a snapshot came between
(``read_state``); a record being written right now reads as a torn tail and is left for the
next compaction (replaying the state onto the new
artifact is idempotent, so nothing is lost either way). The new artifact has the artifact's
keywords minus the deleted and replaced ones, plus the live upserts, a fresh index of the
artifact's kind (an hnsw graph, ``retrieval.hnsw.build_hnsw``, or a compressed faiss index
with the same factory, ``retrieval.compressed.build_compressed``), a fresh BM25 index when the
artifact carries one (``retrieval.lexical``: it must hold the same rows as the store), the
attributes of every keyword (``index/attributes.jsonl``) and its own manifest, written by
``artifact.manifest.staged_folder`` (all or nothing).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from artifact.manifest import MANIFEST_NAME, staged_folder, verify, write_manifest
from artifact.store import write_store
from retrieval.hnsw import build_hnsw
from retrieval.keyword_table import write_attributes
from retrieval.local_index import open_local_index
from retrieval.onnx_encoder import OnnxEncoder
from service.live.keywords import encode_texts
from service.live.liveset import LiveSet
from service.live.snapshot import SnapshotError, latest_snapshot, read_snapshot
from service.live.wal import Change, read_records

ATTRIBUTES_PATH = "index/attributes.jsonl"


READ_ATTEMPTS = 20


def read_state(state_dir: Path) -> LiveSet:
    """The live set as the state folder holds it now (read-only; no lock taken).

    The service may take a snapshot (and empty the log) between our reading the snapshot and
    the log: the log then starts past the snapshot's sequence, and applying it would skip the
    changes in between while ``folded_sequence`` claimed them (#28 finding 13). So the log
    must continue the snapshot without a gap, and the snapshot must still be the latest after
    the log was read; otherwise both are read again.
    """
    state_dir = Path(state_dir)
    for _ in range(READ_ATTEMPTS):
        snap = latest_snapshot(state_dir)
        try:
            live = read_snapshot(snap) if snap else LiveSet()
        except SnapshotError:
            if latest_snapshot(state_dir) != snap:  # replaced (and removed) while we read it
                continue
            raise
        log_path = state_dir / "wal.log"
        payloads = read_records(log_path.read_bytes())[0] if log_path.exists() else []
        pending = [c for c in (Change.decode(p) for p in payloads) if c.sequence > live.sequence]
        if latest_snapshot(state_dir) == snap and _continues(live.sequence, pending):
            return _apply(live, pending)
    raise ValueError(f"the state folder {state_dir} kept changing while it was read (snapshots in quick "
                     "succession); run hlm compact again")


def _continues(sequence: int, pending: list[Change]) -> bool:
    """The log's changes follow ``sequence`` one by one (a number repeated: an older version
    reused one after a failed write, and the later record is the one that stood)."""
    for change in pending:
        if change.sequence not in (sequence, sequence + 1):
            return False
        sequence = change.sequence
    return True


def _apply(live: LiveSet, pending: list[Change]) -> LiveSet:
    if pending and live.teacher is None:
        live.teacher = pending[0].teacher
    for change in pending:
        if change.teacher != live.teacher:  # a swap to another teacher between snapshot and log
            raise ValueError("the state folder mixes two teachers' vectors; let the service take a snapshot first")
        live.apply(change)
    return live


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)  # same file system: no copy of the models
    except OSError:
        shutil.copy2(src, dst)


def compact(artifact: Path, state_dir: Path, out: Path, threads: int = 2) -> dict[str, Any]:
    manifest = verify(artifact)
    idx = manifest["index"]
    teacher = manifest["encoders"]["teacher"]
    teacher_sha = manifest["files"][teacher["onnx"]]["sha256"]
    live = read_state(Path(state_dir))
    index = open_local_index(artifact, idx, int(idx.get("ef") or 64))
    rows = [(kid, text, attrs) for kid, text, attrs in index.keywords()
            if kid not in live.deletes and kid not in live.upserts]
    base = index.vectors_of([kid for kid, _, _ in rows])
    new_ids = list(live.upserts)
    if new_ids and live.teacher != teacher_sha:  # the state came from another teacher: this one's space
        encoder = OnnxEncoder(artifact / teacher["onnx"], artifact / teacher["tokenizer"],
                              int(teacher.get("max_length") or 128), threads=threads)
        new = encode_texts(encoder, [live.upserts[k].text for k in new_ids])
    else:
        new = np.stack([live.upserts[k].vector for k in new_ids]) if new_ids else np.zeros((0, base.shape[1]), np.float32)
    vectors = np.vstack([base, new]).astype(np.float32)
    ids = [r[0] for r in rows] + new_ids
    texts = [r[1] for r in rows] + [live.upserts[k].text for k in new_ids]
    attributes = [r[2] for r in rows] + [live.upserts[k].attributes for k in new_ids]

    lexical = manifest.get("lexical")
    with staged_folder(out) as tmp:
        rebuilt = {idx["path"], idx["store"], idx.get("attributes"), idx.get("vectors"), MANIFEST_NAME}
        for rel in manifest["files"]:
            if rel not in rebuilt and not (lexical and rel.startswith(lexical["path"] + "/")):
                _place(artifact / rel, tmp / rel)
        (tmp / idx["path"]).parent.mkdir(parents=True, exist_ok=True)
        write_store(tmp / idx["store"], ids, texts)
        write_attributes(tmp / ATTRIBUTES_PATH, attributes)
        new_manifest = {key: value for key, value in manifest.items() if key not in ("files", "artifact_sha256")}
        new_manifest["index"] = dict(idx, count=len(ids), attributes=ATTRIBUTES_PATH)
        if idx.get("library") == "faiss":
            from retrieval.compressed import build_compressed, vector_dtype

            if (tmp / idx["vectors"]).parent != (tmp / idx["path"]).parent:
                raise ValueError("the compressed index's vectors must sit beside its faiss file")
            precision = np.dtype(vector_dtype(artifact / idx["vectors"])).name  # as the artifact was built
            new_manifest["index"].update(build_compressed(vectors, (tmp / idx["path"]).parent, idx["factory"],
                                                          threads=threads, precision=precision))
        else:
            build_hnsw(vectors, tmp / idx["path"], int(idx["M"]), int(idx["ef_construction"]), threads=threads)
        if lexical:  # the BM25 index must hold the store's rows, in its order
            from retrieval.lexical import build_lexical

            new_manifest["lexical"] = dict(lexical, **build_lexical(texts, tmp / lexical["path"]))
        new_manifest["live"] = {"folded_sequence": live.sequence, "from_artifact_sha256": manifest["artifact_sha256"],
                                "upserts": len(new_ids), "deletes": len(live.deletes), "state_dir": str(state_dir)}
        written = write_manifest(tmp, new_manifest)
    return {"artifact_sha256": written["artifact_sha256"], "keywords": len(ids), "upserts": len(new_ids),
            "deletes": len(live.deletes), "sequence": live.sequence, "out": str(out)}
