"""What a build reads: the keyword corpus, the query sets and the extra training texts.

Ids are prefixed by source ("hd:", "mq:") so they stay unique and stable across files;
fit and training texts come from the train split only, held-out queries from the dev split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from artifact.manifest import sha256_file
from models import data as data_mod
from models.profiles import Profile
from models.splits import split_of


@dataclass
class Inputs:
    keyword_ids: list[str]
    keyword_texts: list[str]
    fit_queries: list[str]
    heldout_queries: list[str]
    sources: list[dict]
    reports: list[str] = field(default_factory=list)


def select_inputs(profile: Profile, directory: Path | None = None) -> Inputs:
    """The keyword corpus (product titles + web-query keywords) and the query sets.

    Ids are prefixed by source ("hd:", "mq:") so they stay unique and stable across files.
    Fit queries come from the train split only, held-out queries from the dev split only.
    """
    directory = directory or data_mod.data_dir()
    products = _select_products(profile, directory)
    topics = data_mod.load_sample("topics", profile.topics, directory)
    msmarco = data_mod.load_sample("msmarco", None, directory)
    judged = data_mod.load_sample_judgments(directory)

    ids = [f"hd:{i}" for i in products.ids] + [f"mq:{i}" for i in topics.ids]
    texts = products.texts + topics.texts
    seen, keep = set(), []
    for i, text in enumerate(texts):  # a topic may repeat a title verbatim
        if text not in seen:
            seen.add(text)
            keep.append(i)
    ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]

    train = [q for q in judged.queries if split_of(q) == "train"]
    web_train = [q for q in msmarco.texts if split_of(q) == "train"]
    fit = _interleave(train, web_train, profile.fit_queries)
    dev = [q for q in judged.queries if split_of(q) == "dev"]
    web_dev = [q for q in msmarco.texts if split_of(q) == "dev"]
    heldout = _interleave(dev, web_dev, profile.heldout_queries)

    sources = [
        {"path": str(t.report.path), "rows": t.report.kept, "sha256": sha256_file(t.report.path)}
        for t in (products, topics)
    ]
    reports = [t.report.summary() for t in (products, topics, msmarco)] + [judged.report.summary()]
    return Inputs(ids, texts, fit, heldout, sources, reports)


def _select_products(profile: Profile, directory: Path) -> data_mod.TextTable:
    if profile.product_selection == "file":
        return data_mod.load_sample("products", profile.products, directory)
    table = data_mod.load_sample("products", None, directory)
    judged = data_mod.load_sample_judgments(directory)
    train = [q for q in judged.queries if split_of(q) == "train"][: profile.judged_train_queries]
    dev = [q for q in judged.queries if split_of(q) == "dev"][: profile.gate_queries]
    wanted = list(dict.fromkeys(d for q in train + dev for d in judged.by_query[q]))
    row_of = {pid: i for i, pid in enumerate(table.ids)}
    rows = [row_of[d] for d in wanted if d in row_of]
    chosen = set(rows)
    rows += [i for i in range(len(table.ids)) if i not in chosen][: max(0, (profile.products or 0) - len(rows))]
    if profile.products is not None:
        rows = rows[: max(profile.products, 0)]
    table.ids = [table.ids[i] for i in rows]
    table.texts = [table.texts[i] for i in rows]
    table.report.notes.append(f"{len(rows)} titles chosen: judged products of {len(train)} train and {len(dev)} dev queries first")
    return table


def _interleave(a: list[str], b: list[str], limit: int | None) -> list[str]:
    out, seen = [], set()
    for pair in zip(a, b):
        for q in pair:
            if q not in seen:
                seen.add(q)
                out.append(q)
    for q in a[len(b) :] + b[len(a) :]:
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out[:limit] if limit is not None else out


def extra_training_texts(profile: Profile) -> list[str]:
    """The profile's extra phase-2 texts: train-split MS MARCO queries and Million Query topics."""
    from models.distill.prepare import train_queries

    extra = train_queries()[1][: profile.distill_extra_web] if profile.distill_extra_web else []
    if profile.distill_extra_topics:
        topics = data_mod.load_sample("topics").texts
        extra += [t for t in topics if split_of(t) == "train"][: profile.distill_extra_topics]
    return extra
