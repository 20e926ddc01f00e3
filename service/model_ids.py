"""Model ids: what OpenAI-style clients call the two encoders (``GET /v1/models``, ``model`` of
``POST /v1/embeddings``), derived from the manifest in this one place.

The manifest's ``model`` fields are notes for people ("static trained by hlm distill (phase3,
step 300)"); an id is an identifier: ``hlm-student-<family>`` and ``hlm-teacher-<base>``,
lower case, letters, digits, ``.`` and ``-``. ``student`` and ``teacher``, and the notes, stay
accepted as names for the same encoders.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

ENCODERS = ("student", "teacher")
OWNER = "hlm"
_TRAINED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*) trained by hlm distill")
_SLUG = re.compile(r"[^a-z0-9.]+")


def _slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-.") or "model"


def _student(manifest: dict[str, Any]) -> str:
    note = manifest["encoders"]["student"].get("model") or ""
    family = (manifest.get("profile") or {}).get("student") or "student"
    trained = _TRAINED.match(note)
    if trained:  # a checkpoint names its own family (it may differ from the profile's)
        family = trained.group(1)
    elif "closed-form" in note:
        family += "-linear"  # the small profile's fitted projection, not a trained student
    return f"hlm-student-{_slug(family)}"


def _teacher(manifest: dict[str, Any]) -> str:
    note = manifest["encoders"]["teacher"].get("model") or ""
    base = note.split(" ")[0].rsplit("/", 1)[-1]  # "sentence-transformers/all-mpnet-base-v2 ..." -> all-mpnet-base-v2
    short = "mpnet" if base == "all-mpnet-base-v2" else _slug(base)
    return f"hlm-teacher-{short}" + ("-phase1" if "fine-tuned" in note else "")


def model_ids(manifest: dict[str, Any]) -> dict[str, str]:
    """encoder -> its id."""
    return {"student": _student(manifest), "teacher": _teacher(manifest)}


def created(manifest: dict[str, Any]) -> int:
    """The build's time as OpenAI's ``created`` (Unix seconds); 0 when the manifest has none."""
    try:
        return int(datetime.fromisoformat(manifest["created_utc"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return 0


def model_objects(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """encoder -> its OpenAI model object."""
    when = created(manifest)
    return {encoder: {"id": model_id, "object": "model", "created": when, "owned_by": OWNER}
            for encoder, model_id in model_ids(manifest).items()}
