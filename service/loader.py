"""The start-up gate: which artifact folder, whether it may be served, at which precision.

Run before anything is loaded (start-up and every reload): a folder the manifest does not
vouch for, or one its build marked not servable, stops here with one sentence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from artifact.manifest import ArtifactError, FilePins, read_manifest, verify
from service.settings import Settings

log = logging.getLogger(__name__)


def load_manifest(settings: Settings, root: Optional[Path] = None, pins: Optional[FilePins] = None) -> dict[str, Any]:
    """Verify the artifact folder; ArtifactError (one sentence) if it must not be served.
    ``pins`` receives what was hashed: ``pins.check(root)`` once loaded (the files are opened
    again by the loaders; one replaced in between must not be served)."""
    root = Path(root or settings.artifact_dir)
    if settings.artifact_sha256 is not None:  # checked before the checksums: it is cheap, they are not
        found = read_manifest(root).get("artifact_sha256")
        if found != settings.artifact_sha256:
            raise ArtifactError(f"The artifact in {root} is {str(found)[:12]}, not {settings.artifact_sha256[:12]} "
                                f"(HLM_ARTIFACT_SHA256): it was replaced since.")
    manifest = verify(root, checksums=settings.verify_checksums, pins=pins)
    if manifest.get("servable") is False:
        why = (manifest.get("gate") or {}).get("message")
        raise ArtifactError(f"The artifact in {root} is marked not servable in its manifest"
                            + (f": {why}." if why else "."))
    gate = manifest.get("gate") or {}
    if gate.get("overridden"):
        log.warning("serving below the quality gate (the builder overrode it): %s", gate.get("message"))
    if student_precision(settings, manifest) == "int8" and not manifest["encoders"]["student"].get("onnx_int8"):
        raise ArtifactError(f"Student precision int8 was asked for but the artifact in {root} has no int8 student.")
    return manifest


def resolve_artifact(settings: Settings) -> Path:
    """The configured artifact folder with symlinks resolved, read once per load.

    An operator swaps artifacts by re-pointing a symlink (or renaming a folder into
    place); resolving first means one load reads one folder from start to end.
    """
    return Path(os.path.realpath(settings.artifact_dir))


def student_precision(settings: Settings, manifest: dict[str, Any]) -> str:
    """The student precision to serve: the setting, else the manifest's default, else fp32."""
    student = manifest["encoders"]["student"]
    return settings.student_precision or student.get("default_precision") or "fp32"
