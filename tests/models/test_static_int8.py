"""The calibrated (static) int8 copy of a transformer student (models/export.py,
issue #14): a query's top-10 does not depend on its batch-mates, and keeping the MatMuls
that read the GELU output in fp32 brings its vectors back close to fp32.

On the small artifact's MiniLM student, over dev queries, searched in the artifact's own
index; the dynamic copy keeps only 9 % of these top-10s in batches. On the mpnet-l2 demo
student the same static copy scores dev nDCG@10 0.3063 against the dynamic copy's 0.3090
(docs/BENCHMARKS.md, "Session 6").
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.distill.prepare import train_queries
from models.eval import judged
from models.export import quantize_int8_static
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex
from retrieval.onnx_encoder import OnnxEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student(small_artifact):
    spec = json.loads((small_artifact / "manifest.json").read_text())["encoders"]["student"]
    return small_artifact / spec["onnx"], small_artifact / spec["tokenizer"]


@pytest.fixture(scope="module")
def dev_queries():
    queries = [q for q in judged.data_mod.load_sample_judgments().by_query if judged.split_of(q) == "dev"]
    return queries[:120]


@pytest.fixture(scope="module")
def static_copies(student, tmp_path_factory):
    onnx, tokenizer = student
    judged_train, web_train = train_queries()
    calibration = [q for pair in zip(judged_train, web_train) for q in pair][:60]  # train split only
    folder = tmp_path_factory.mktemp("static-int8")
    copies = {}
    for kept in (False, True):
        path = folder / f"model.int8-static-{kept}.onnx"
        quantize_int8_static(onnx, path, tokenizer, calibration, "minmax", activation_output_fp32=kept)
        copies[kept] = OnnxEncoder(path, tokenizer)
    return copies


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_a_querys_top10_is_the_same_alone_and_inside_a_mixed_batch(small_artifact, static_copies, dev_queries):
    m = json.loads((small_artifact / "manifest.json").read_text())["index"]
    index = HnswIndex(small_artifact / m["path"], small_artifact / m["store"], m["dim"], m["ef"])
    encoder = static_copies[True]
    alone = encoder.encode_each(dev_queries).vectors
    # Batches of 16 mixing short and long queries (padded to the longest), in a shuffled order.
    order = np.random.default_rng(0).permutation(len(dev_queries))
    batched = np.empty_like(alone)
    for start in range(0, len(order), 16):
        rows = order[start:start + 16]
        batched[rows] = encoder.encode([dev_queries[i] for i in rows]).vectors
    params = SearchParams(k=10)
    same = [[h.id for h in a] == [h.id for h in b]
            for a, b in zip(index.search(alone, params), index.search(batched, params))]
    assert sum(same) / len(same) >= 0.999, sum(same)


def test_keeping_the_gelu_outputs_in_fp32_brings_the_vectors_back(student, static_copies, dev_queries):
    onnx, tokenizer = student
    fp32 = OnnxEncoder(onnx, tokenizer).encode_each(dev_queries).vectors
    everything = mean_cosine(fp32, static_copies[False].encode_each(dev_queries).vectors)
    kept = mean_cosine(fp32, static_copies[True].encode_each(dev_queries).vectors)
    # Seen: 0.980 with every MatMul quantized, 0.997 with the GELU outputs kept (dynamic: 0.998).
    assert kept > everything and kept >= 0.99, (everything, kept)
