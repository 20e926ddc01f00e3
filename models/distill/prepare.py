"""Training sets for the phases, from the sample data's TRAIN split only.

Dev-split queries never enter: every query passes ``split_of(query) == "train"`` here,
and tests/models/test_distill.py checks it.
"""

from __future__ import annotations

import random

import numpy as np

from models import data as data_mod
from models.distill.teacher_vectors import TeacherVectors
from models.distill.train import TrainingData
from retrieval.exact import exact_top_k
from models.eval.metrics import RELEVANT
from models.splits import split_of


def train_queries() -> tuple[list[str], list[str]]:
    """(judged Home Depot train queries, MS MARCO train queries)."""
    judged = data_mod.load_sample_judgments()
    msmarco = data_mod.load_sample("msmarco")
    return (
        [q for q in judged.queries if split_of(q) == "train"],
        [q for q in msmarco.texts if split_of(q) == "train"],
    )


def products_with_vectors(teacher: TeacherVectors, limit: int | None = None):
    products = data_mod.load_sample("products", limit)
    return products, teacher(products.texts, "product titles (teacher)")


def build_training_data(
    teacher: TeacherVectors,
    products_limit: int | None = None,
    topics_limit: int | None = 0,
    web_queries: int | None = None,
    kl_candidates: int = 32,
    hard_negatives: int = 8,
    seed: int = 0,
    queries_limit: int | None = None,
    products: tuple[list[str], list[str], np.ndarray] | None = None,
    extra_texts: list[str] | None = None,
) -> TrainingData:
    """Phase-2 texts (train queries + keyword texts) and phase-3 judged pairs.

    Keyword texts are the product titles (they read like queries and their teacher
    vectors exist anyway) and optionally web-query topics.
    """
    rng = random.Random(seed)
    judged_train, web_train = train_queries()
    if products is None:
        table, doc_vectors = products_with_vectors(teacher, products_limit)
        product_ids, product_texts = table.ids, table.texts
    else:  # the build passes its own keyword products and their teacher vectors
        product_ids, product_texts, doc_vectors = products
    index_of = {pid: i for i, pid in enumerate(product_ids)}
    judged = data_mod.load_sample_judgments()
    if products is not None:  # only queries with a positive among these products
        judged_train = [q for q in judged_train
                        if any(r >= RELEVANT and d in index_of for d, r in judged.by_query[q].items())]
    judged_train = judged_train[:queries_limit]

    texts = judged_train + web_train[:web_queries] + product_texts + (extra_texts or [])
    if topics_limit != 0:
        texts += data_mod.load_sample("topics", topics_limit).texts
    texts = list(dict.fromkeys(texts))
    text_targets = teacher(texts, "phase-2 texts (teacher)")
    # For ranking KL: each text's candidates are the teacher's top keywords for it
    # (an exact search over all texts: skipped when the objective does not use it).
    text_candidates = None
    if kl_candidates:
        text_candidates = exact_top_k(doc_vectors, text_targets, kl_candidates).astype(np.int64)

    pair_queries, pair_positive, pair_negatives = [], [], []
    query_targets = dict(zip(judged_train, teacher(judged_train, "judged train queries (teacher)")))
    train_top = exact_top_k(doc_vectors, np.stack([query_targets[q] for q in judged_train]), 50)
    for query, top in zip(judged_train, train_top.tolist()):
        graded = judged.by_query[query]
        positives = [index_of[d] for d, r in graded.items() if r >= RELEVANT and d in index_of]
        if not positives:
            continue
        relevant = {index_of[d] for d, r in graded.items() if r >= 2.0 and d in index_of}
        # Hard negatives: products raters judged not relevant (< 2), then teacher-ranked
        # unjudged products from ranks 10-50 (near misses, less likely unjudged positives).
        negatives = [index_of[d] for d, r in graded.items() if r < 2.0 and d in index_of]
        judged_rows = {index_of[d] for d in graded if d in index_of}
        far = [row for row in top[10:] if row not in judged_rows and row not in relevant]
        rng.shuffle(far)
        negatives = (negatives + far)[:hard_negatives]
        for positive in positives:
            pair_queries.append(query)
            pair_positive.append(positive)
            pair_negatives.append(negatives)
    return TrainingData(
        texts=texts,
        text_targets=text_targets,
        pair_queries=pair_queries,
        pair_query_targets=np.stack([query_targets[q] for q in pair_queries]),
        pair_positive=pair_positive,
        pair_negatives=pair_negatives,
        doc_vectors=doc_vectors,
        text_candidates=text_candidates,
    )
