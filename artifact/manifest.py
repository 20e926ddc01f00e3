"""The artifact folder contract: write, checksum and verify ``manifest.json``.

Standard library only, so the serving environment (no torch) can import it.

An artifact folder looks like this (paths relative to the folder)::

    manifest.json
    student/model.onnx          fp32 student: input_ids, attention_mask -> embedding
    student/model.int8.onnx     dynamic int8 copy of the student
    student/tokenizer.json      padding off, truncation at max_length
    teacher/model.onnx          fp32 teacher, same signature
    teacher/tokenizer.json
    index/keywords.hnsw         hnswlib index, label i == row i of the store
    index/keywords.tsv          keyword store: id <TAB> text, one row per label
    eval.json                   evaluation summary (optional)

Every ONNX encoder takes ``input_ids`` and ``attention_mask`` (int64, [batch, seq])
and returns ``embedding`` (float32, [batch, dim]), mean-pooled and L2-normalised
inside the graph, so the runtime needs no post-processing.

The service trusts nothing the manifest does not vouch for: ``verify`` raises
``ArtifactError`` with one sentence for a missing file, a wrong checksum, an
unreadable manifest, inconsistent dimensions, a top-level ``artifact_sha256`` that is
not the hash of the listed files and (``hash_version`` 2) of every other manifest field,
a referenced file that is not listed (models, tokenizers, index, store, attributes), or a
listed path that leads outside the folder (absolute, ``..``, or a symlink whose target lies
elsewhere). ``FilePins`` closes the gap between hashing a file and loading it: each file's
identity when it was hashed, checked again once everything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# 1 (no field): artifact_sha256 covers the files only, so a hand-edited `servable`, `gate`,
# index `ef` or `attributes` kept the identity of another build. 2: it covers every field.
HASH_VERSION = 2
ENCODER_NAMES = ("student", "teacher")

log = logging.getLogger(__name__)


class ArtifactError(Exception):
    """An artifact folder that must not be served; the message is one sentence."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` except the manifest itself."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(root).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``files`` and ``artifact_sha256`` and write the manifest atomically."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["hash_version"] = HASH_VERSION
    manifest.pop("artifact_sha256", None)
    manifest["files"] = describe_files(root)
    manifest["artifact_sha256"] = artifact_hash(manifest["files"], manifest)
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def artifact_hash(files: dict[str, dict[str, Any]], manifest: dict[str, Any] | None = None) -> str:
    """One hash for the whole artifact: the hash of its file hashes and, for a ``manifest`` of
    ``hash_version`` 2, of every other field in canonical JSON (what the service serves depends
    on them: servable, gate, index ef and attributes, encoders, precisions)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    if manifest is not None and manifest.get("hash_version") == HASH_VERSION:
        fields = {key: value for key, value in manifest.items() if key not in ("files", "artifact_sha256")}
        digest.update(b"manifest\0" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not Path(root).is_dir():
        raise ArtifactError(f"Artifact folder {root} does not exist; run `hlm build` first.")
    if not path.is_file():
        raise ArtifactError(f"Artifact folder {root} has no {MANIFEST_NAME}; it is incomplete or not an artifact.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON ({exc.__class__.__name__}: {exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} is not a version-{FORMAT_VERSION} manifest.")
    return manifest


class FilePins(dict):
    """rel -> each file's identity (device, inode, size, mtime) when ``verify`` hashed it.

    ``verify`` hashes the files and the loader opens them again later: a file replaced or
    rewritten in between would be served unverified. ``check`` after the load refuses that."""

    def check(self, root: Path | str) -> None:
        for rel, pinned in self.items():
            try:
                now = _identity(os.stat(Path(root) / rel))
            except OSError:
                now = None
            if now != pinned:
                raise ArtifactError(f"Artifact file {rel} changed after it was verified (replaced or rewritten while "
                                    f"it was being loaded); load the artifact again.")


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _hash_pinned(path: Path, chunk: int = 1 << 20) -> tuple[str, tuple]:
    """sha256 of the file and the identity of the very file read (fstat of the same handle)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
        return digest.hexdigest(), _identity(os.fstat(handle.fileno()))


def verify(root: Path | str, *, checksums: bool = True, pins: FilePins | None = None) -> dict[str, Any]:
    """Read the manifest and check every promise it makes; return it if all hold. ``pins``,
    if given, receives each file's identity as hashed (``FilePins.check`` after loading)."""
    root = Path(root)
    manifest = read_manifest(root)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{root / MANIFEST_NAME} lists no files.")
    inside = root.resolve()
    for rel, info in files.items():
        path = _inside(root, inside, rel)
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise ArtifactError(f"The manifest's entry for {rel} has no sha256.")
        if not path.is_file():
            raise ArtifactError(f"Artifact file {rel} named in the manifest is missing from {root}.")
        if path.stat().st_size != info.get("bytes"):
            raise ArtifactError(
                f"Artifact file {rel} is {path.stat().st_size} bytes but the manifest says {info.get('bytes')} (truncated or replaced)."
            )
        if checksums:
            digest, identity = _hash_pinned(path)
            if digest != info.get("sha256"):
                raise ArtifactError(f"Artifact file {rel} does not match its sha256 in the manifest (corrupted or replaced).")
        else:
            identity = _identity(path.stat())
        if pins is not None:
            pins[rel] = identity
    _check_references(root, manifest)
    # The top-level hash is what /v1/info, the metrics and reloads report: it must be the
    # hash of the files just checked (and of the other fields), or a hand-edited manifest
    # could claim another build.
    version = manifest.get("hash_version", 1)
    if version not in (1, HASH_VERSION):
        raise ArtifactError(f"The manifest's hash_version {version!r} is unknown here (1 or {HASH_VERSION}).")
    if manifest.get("artifact_sha256") != artifact_hash(files, manifest):
        raise ArtifactError("The manifest's artifact_sha256 is not the hash of the files it lists (forged or stale).")
    if version == 1:
        log.info("artifact %s predates hash_version 2: its artifact_sha256 covers its files but not its other "
                 "fields (servable, gate, index, encoders); a rebuild covers them", root)
    return manifest


def _inside(root: Path, inside: Path, rel: Any) -> Path:
    """``root / rel`` if it stays inside the artifact folder (``inside``: root resolved)."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        raise ArtifactError(f"The manifest lists a file name that is not a relative path ({rel!r}).")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise ArtifactError(f"The manifest lists {rel!r}, a path outside the artifact folder.")
    path = root / rel
    # A symlink may point anywhere: what is served must be the folder's own files.
    if not path.resolve().is_relative_to(inside):
        raise ArtifactError(f"Artifact file {rel} leads outside the artifact folder (a symlink to {path.resolve()}).")
    return path


def _check_references(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    index = manifest.get("index") or {}
    dim = index.get("dim")
    for key in ("path", "store"):
        if index.get(key) not in files:
            raise ArtifactError(f"The manifest's index.{key} ({index.get(key)!r}) is not one of its files.")
    # Optional, but when named it is loaded: listed (so hashed, and checked to stay inside).
    if index.get("attributes") is not None and index["attributes"] not in files:
        raise ArtifactError(f"The manifest's index.attributes ({index['attributes']!r}) is not one of its files.")
    encoders = manifest.get("encoders") or {}
    for name in ENCODER_NAMES:
        enc = encoders.get(name)
        if not isinstance(enc, dict):
            raise ArtifactError(f"The manifest describes no {name} encoder.")
        for key in ("onnx", "tokenizer"):
            if enc.get(key) not in files:
                raise ArtifactError(f"The manifest's encoders.{name}.{key} ({enc.get(key)!r}) is not one of its files.")
        if enc.get("onnx_int8") is not None and enc["onnx_int8"] not in files:
            raise ArtifactError(f"The manifest's encoders.{name}.onnx_int8 is not one of its files.")
        if enc.get("dim") != dim:
            raise ArtifactError(
                f"The {name} encoder outputs {enc.get('dim')}-d vectors but the index holds {dim}-d vectors."
            )


def encoder_model(spec: dict[str, Any], precision: str) -> str:
    """The ONNX file of an encoder at a precision ("fp32" or "int8"), relative to the artifact."""
    if precision == "int8":
        if not spec.get("onnx_int8"):
            raise ArtifactError("int8 was asked for but the artifact has no int8 copy of this encoder.")
        return spec["onnx_int8"]
    return spec["onnx"]


def _remove_abandoned(final: Path) -> None:
    """Delete partial folders left by killed builds of ``final`` (their process is gone)."""
    for partial in final.parent.glob(f".{final.name}.partial-*"):
        pid = partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it into place on success.

    A crash or an exception leaves ``final`` untouched (the old artifact, or nothing),
    never half an artifact. The previous artifact, if any, is replaced only after the
    new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    # mkdtemp makes the folder 0700; an artifact is read by other users (the container's
    # non-root service user mounts it), so open it up like any folder made by mkdir.
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
