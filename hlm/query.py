"""`hlm query`: the student's and the teacher's keywords for one query, side by side.

Two sources give the same answer shape: a running service (``/v1/search`` over HTTP) or an
artifact folder loaded with the service's own classes (``load_manifest`` as the start-up
gate, ``Runtime`` and its batch function), so a relevance question can be asked of an
artifact before anything serves it. No torch either way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

ENCODERS = ("student", "teacher")


class QueryError(Exception):
    """Nothing to show: one sentence for the user."""


@dataclass
class Side:
    """One encoder's answer, or why there is none."""

    encoder: str
    keywords: list[dict] = field(default_factory=list)  # {"id", "text", "score"}, best first
    precision: str = ""
    timings: dict = field(default_factory=dict)
    error: Optional[str] = None


def encoders_for(choice: str) -> tuple[str, ...]:
    if choice == "both":
        return ENCODERS
    if choice in ENCODERS:
        return (choice,)
    raise QueryError(f"--encoder must be student, teacher or both, not {choice!r}.")


def from_service(url: str, text: str, k: int, encoders: Sequence[str], ef: Optional[int] = None,
                 flt: Optional[dict] = None, timeout: float = 30.0) -> list[Side]:
    import httpx

    body = {"query": text, "k": k} | ({"ef": ef} if ef else {}) | ({"filter": flt} if flt else {})
    sides = []
    # One after the other, not together: on a small machine two concurrent requests share the
    # cores, and each side's server timings should be its own.
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
        for name in encoders:
            try:
                response = client.post("/v1/search", json=body | {"encoder": name})
            except httpx.HTTPError as exc:
                raise QueryError(f"cannot reach the service at {url} ({exc.__class__.__name__}: {exc}); "
                                 "is it running? (hlm serve, or --artifact DIR to read an artifact directly)") from None
            try:
                data = response.json()
            except ValueError:
                data = None
            if response.status_code != 200 or not isinstance(data, dict):
                message = (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
                sides.append(Side(name, error=message or f"HTTP {response.status_code}"))
                continue
            sides.append(Side(name, keywords=data["results"][0]["keywords"], precision=data.get("precision", ""),
                              timings=data.get("timings") or {}))
    return sides


def from_artifact(folder: Path, text: str, k: int, encoders: Sequence[str], ef: Optional[int] = None,
                  flt: Optional[dict] = None) -> list[Side]:
    from artifact.manifest import ArtifactError
    from artifact.text import normalise_text
    from retrieval.base import SearchParams
    from service.loader import load_manifest
    from service.metrics import Metrics
    from service.runtime import Runtime
    from service.settings import Settings

    cleaned = normalise_text(text)  # what the service does to a query
    if not cleaned:
        raise QueryError("the query is empty or whitespace only.")
    settings = Settings(artifact_dir=folder, warmup_rounds=0)
    if k > settings.max_k:
        raise QueryError(f"k must be between 1 and {settings.max_k}.")
    try:
        manifest = load_manifest(settings, folder)  # the service's start-up gate
        runtime = Runtime(settings, manifest, Metrics(), root=folder)
        runtime.load(encoders)
    except ArtifactError as exc:
        raise QueryError(str(exc)) from None
    params = SearchParams(k=k, ef=ef or runtime.default_ef, filter=flt or None)
    sides = []
    for name in encoders:
        slot = runtime.slots[name]
        t0 = time.perf_counter()
        vectors = slot.encoder.encode([cleaned]).vectors  # one text: no batch-mates to depend on
        t1 = time.perf_counter()
        try:
            hits = runtime.index.search(vectors, params)[0]
        except (ValueError, NotImplementedError) as exc:  # e.g. a filter this index cannot apply
            raise QueryError(str(exc)) from None
        t2 = time.perf_counter()
        sides.append(Side(name, keywords=[{"id": h.id, "text": h.text, "score": h.score} for h in hits],
                          precision=slot.precision,
                          timings={"encode_ms": (t1 - t0) * 1000.0, "index_ms": (t2 - t1) * 1000.0}))
    return sides


def overlap(sides: Sequence[Side]) -> Optional[tuple[int, int]]:
    """(shared, teacher's k): overlap@k as the service's shadow metric counts it."""
    by = {s.encoder: s for s in sides if s.error is None}
    if set(by) != set(ENCODERS) or not by["teacher"].keywords:
        return None
    teacher = {h["id"] for h in by["teacher"].keywords}
    return len({h["id"] for h in by["student"].keywords} & teacher), len(teacher)


def _timing(side: Side) -> str:
    t = side.timings
    parts = ", ".join(f"{key[:-3]} {t[key]:.2f}" for key in ("queue_ms", "encode_ms", "index_ms") if key in t)
    if "total_ms" in t:
        return f"{side.encoder}: server {t['total_ms']:.2f} ms ({parts})"
    return f"{side.encoder}: {parts} ms"


def table(query: str, sides: Sequence[Side], source: str) -> tuple[Table, list[str]]:
    """The side-by-side table, and the lines to print under it (overlap, timings, errors)."""
    ok = [s for s in sides if s.error is None]
    shared: set[str] = set()
    if len(ok) == 2:
        shared = {h["id"] for h in ok[0].keywords} & {h["id"] for h in ok[1].keywords}
    grid = Table(title=f"{query!r} · {source}", title_justify="left", show_lines=False, expand=False)
    grid.add_column("#", justify="right", style="dim", no_wrap=True)
    for side in ok:
        grid.add_column(f"{side.encoder} ({side.precision})" if side.precision else side.encoder, overflow="fold")
        grid.add_column("score", justify="right", no_wrap=True)
    rows = max((len(s.keywords) for s in ok), default=0)
    for i in range(rows):
        cells: list = [str(i + 1)]
        for side in ok:
            if i >= len(side.keywords):
                cells += ["", ""]
                continue
            hit = side.keywords[i]
            both = hit["id"] in shared
            cell = Text("● " if both else "  ", style="bold cyan")
            cell.append(hit["text"], style="bold" if both else "")
            cell.append(f"\n  {hit['id']}", style="dim")
            cells += [cell, f"{hit['score']:.3f}"]
        grid.add_row(*cells)
    notes = []
    figure = overlap(sides)
    if figure:
        n, k = figure
        notes.append(f"overlap@{k}: {n} of {k} shared ({n / k:.2f}); ● marks a keyword in both")
    notes += [_timing(s) for s in ok]
    notes += [f"{s.encoder}: no answer: {s.error}" for s in sides if s.error is not None]
    return grid, notes


def run(text: str, *, encoder: str, k: int, url: Optional[str], artifact: Optional[Path],
        ef: Optional[int] = None, filter_json: Optional[str] = None, console: Optional[Console] = None) -> int:
    """Print the table; the exit status: 0, or 1 when an encoder gave no answer."""
    console = console or Console()
    names = encoders_for(encoder)
    if url and artifact:
        raise QueryError("give --url or --artifact, not both.")
    if not text.strip():
        raise QueryError("the query is empty or whitespace only.")
    flt = None
    if filter_json:
        try:
            flt = json.loads(filter_json)
        except ValueError:
            raise QueryError('--filter is not valid JSON; write an object such as \'{"source": "hd"}\'.') from None
        if not isinstance(flt, dict):
            raise QueryError('--filter must be a JSON object such as \'{"source": "hd"}\'.')
    if artifact is not None:
        sides = from_artifact(artifact, text, k, names, ef, flt)
        source = f"artifact {artifact}"
    else:
        url = url or "http://127.0.0.1:8000"
        sides = from_service(url, text, k, names, ef, flt)
        source = url
    grid, notes = table(text, sides, source)
    if any(s.error is None for s in sides):
        console.print(grid)
    for line in notes:  # below the table, not as its caption: a caption wraps at the table's width
        console.print(line, markup=False, highlight=False)
    return 1 if any(s.error for s in sides) else 0
