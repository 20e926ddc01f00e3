"""Fixtures for the reliability tests: real servers on loopback, artifact variants.

The servers come from tests/service/http_helpers.py (`hlm serve` in a subprocess).
Artifact variants are folders of hard links to the small artifact's files with only the
changed files copied, so a variant costs almost nothing to make. (Not symlinks: `verify`
refuses a file that leads outside its folder. A test must only write to copied files: a
hard link shares its bytes with the original.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from http_helpers import Server, start_server  # noqa: E402,F401 - start_server is a fixture

from artifact.manifest import MANIFEST_NAME, artifact_hash, sha256_file  # noqa: E402

TOKEN = "hlm-test-admin-token-7f3c9a"


def clone_artifact(src: Path, dst: Path, copy: tuple[str, ...] = ()) -> Path:
    """A variant of ``src``: the manifest and the files named in ``copy`` copied, the rest hard-linked."""
    for path in Path(src).rglob("*"):
        if path.is_file():
            rel = path.relative_to(src).as_posix()
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel == MANIFEST_NAME or rel in copy:
                shutil.copy(path, target)
            else:
                try:
                    os.link(path.resolve(), target)
                except OSError:  # another file system: a copy (slower, same result)
                    shutil.copy(path, target)
    return dst


def rewrite_manifest(root: Path, changed: tuple[str, ...] = (), **updates) -> dict:
    """Re-vouch for ``changed`` files (new sha256 and size) and apply ``updates``, as a forger would."""
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    for rel in changed:
        manifest["files"][rel] = {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
    for key, value in updates.items():
        manifest[key] = value
    manifest["artifact_sha256"] = artifact_hash(manifest["files"], manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def swap_tokenizer(src: Path, dst: Path) -> Path:
    """The student's tokenizer replaced by the teacher's, the manifest re-written to match."""
    clone_artifact(src, dst, copy=("student/tokenizer.json",))
    shutil.copy(src / "teacher/tokenizer.json", dst / "student/tokenizer.json")
    rewrite_manifest(dst, ("student/tokenizer.json",))
    return dst


@pytest.fixture(scope="session")
def rserver(start_server):
    """One server for the fuzz, odd-text, token-in-logs and overload tests: admin token on,
    every request logged at debug level, default queue bounds."""
    srv = start_server(admin_token=TOKEN, access_log="true", log_level="debug", max_queries=4, max_k=20)
    srv.wait_for("/readyz")
    srv.client.headers["Authorization"] = f"Bearer {TOKEN}"
    return srv


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
