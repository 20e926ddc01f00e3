"""What a search's filter can name, said to the client (issue #26, item 5).

- ``catalogue``: the filterable attributes and their value counts, for ``GET /v1/info``.
- ``check_filter``: a filter naming an attribute no keyword carries is refused (422, with the
  known ones named: a typo or a wrong case used to return 200 with no hits); a known attribute
  with a value no keyword has is a legitimate empty answer, so it stays 200 with a sentence in
  the response's ``warnings``.
- ``with_attributes``: hits carrying their keyword's attributes, when the request asks.

All three read the index's postings (``HnswIndex.attribute_counts`` / ``match_counts`` /
``attributes_of``). A backend without them (Milvus: listing values would mean a scan of the
collection, and a lookup per hit a round trip on the event loop) is said to be unlisted and
unchecked, and its filters are applied as given.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from service.errors import InvalidRequest

MAX_LISTED_VALUES = 50  # per attribute in /v1/info, the most common first; `distinct` counts them all


def _listed(index) -> bool:
    return callable(getattr(index, "attribute_counts", None))


def catalogue(index) -> dict[str, Any]:
    """``{"listed": true, "attributes": {name: {"keywords", "distinct", "values": [{"value", "keywords"}]}}}``,
    or ``{"listed": false, "note"}`` for a backend that cannot say."""
    if not _listed(index):
        return {"listed": False,
                "note": f"the {getattr(index, 'backend', 'index')} backend does not list attributes; "
                        "filters are applied as given (an unknown attribute matches nothing)"}
    attributes = {}
    for name, values in sorted(index.attribute_counts().items()):
        ranked = sorted(values, key=lambda item: (-item[1], json.dumps(item[0])))
        attributes[name] = {"keywords": sum(n for _, n in values), "distinct": len(values),
                            "values": [{"value": v, "keywords": n} for v, n in ranked[:MAX_LISTED_VALUES]]}
    return {"listed": True, "max_listed_values": MAX_LISTED_VALUES, "attributes": attributes}


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def check_filter(index, flt: Optional[dict]) -> list[str]:
    """Raise InvalidRequest (422) for an attribute no keyword carries; return warnings (sentences)
    for values no keyword has. Nothing to say (or nothing known): []."""
    if not flt or not _listed(index):
        return []
    counts = index.match_counts(flt)
    unknown = [name for name, got in counts.items() if got is None]
    if unknown:
        known = sorted(index.attribute_counts())
        names = ", ".join(repr(n) for n in unknown)
        listed = ", ".join(repr(n) for n in known) if known else "none: no keyword carries an attribute"
        raise InvalidRequest(f"Invalid request: filter: no keyword carries the attribute{'s' if len(unknown) > 1 else ''} "
                             f"{names}; the filterable attributes are {listed} (names are case-sensitive; "
                             "GET /v1/info lists their values).", code="unknown_attribute")
    warnings = []
    for name, got in counts.items():
        want = flt[name] if isinstance(flt[name], list) else [flt[name]]
        missing = [v for v, n in zip(want, got) if n == 0]
        if missing:
            what = ", ".join(_show(v) for v in missing)
            warnings.append(f"filter: no keyword has {name} = {what}" +
                            (" (nothing can match)" if len(missing) == len(want) else "") +
                            "; GET /v1/info lists the values (they are case-sensitive).")
    return warnings


def with_attributes(index, results: list[dict]) -> list[str]:
    """Give each hit of ``results`` (the response's rows, changed in place with fresh dicts: the
    result cache's stay untouched) its keyword's ``attributes``; a warning when the backend cannot."""
    attributes_of = getattr(index, "attributes_of", None)
    if not callable(attributes_of):
        return [f"attributes: the {getattr(index, 'backend', 'index')} backend does not return keyword attributes; "
                "hits come without them."]
    for row in results:
        found = attributes_of([hit["id"] for hit in row["keywords"]])
        row["keywords"] = [hit | {"attributes": attrs} for hit, attrs in zip(row["keywords"], found)]
    return []
