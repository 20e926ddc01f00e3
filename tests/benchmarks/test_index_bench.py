"""The benchmarks' arithmetic: index_bench's exact search and recall, flops' counts.

Hand-made tiny cases whose answers are worked out by hand; no timing is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import flops
from benchmarks.index_bench import (
    EfRow,
    ExactTopK,
    ef_for_recall,
    exact_topk,
    recall_at_k,
    subspace_noise_generator,
    sweep_ef,
    synthetic_chunks,
)

# ---------------------------------------------------------------- recall and exact search


def test_recall_counts_the_overlap_per_query_whatever_the_order():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 2, 9, 0],  # 3 of 4 right, in another order
                       [8, 9, 10, 4]])  # 1 of 4
    assert recall_at_k(approx, exact, 4) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert recall_at_k(exact, exact, 4) == 1.0
    # only the first k columns count on both sides
    assert recall_at_k(np.array([[0, 1, 7]]), np.array([[1, 0, 2]]), 2) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(exact[:1], exact, 4)


def test_exact_topk_on_a_hand_made_case():
    # 2-d points on the unit circle; query along x: inner product = cos(angle)
    angles = np.array([0.0, 0.3, -0.2, 1.5, 3.0, -0.6])
    data = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    labels = exact_topk(data, q, k=3, chunk=2)  # chunks of 2: the running merge is exercised
    assert labels[0].tolist() == [0, 2, 1]  # angles 0, -0.2, 0.3
    assert labels[1].tolist() == [3, 1, 4]  # sin: 1.5 -> .997, 0.3 -> .296, 3.0 -> .141


def test_exact_topk_chunked_equals_one_pass():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    one = np.argsort(-(q @ data.T), axis=1)[:, :10]
    assert (exact_topk(data, q, 10, chunk=37) == one).all()
    acc = ExactTopK(q, 10)
    for start in range(0, 500, 100):
        acc.add(data[start : start + 100], start)
    assert (acc.labels == one).all()


def test_sweep_ef_on_a_real_tiny_hnsw_graph():
    import hnswlib

    rng = np.random.default_rng(0)
    data = rng.standard_normal((300, 8)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = hnswlib.Index(space="ip", dim=8)
    index.init_index(max_elements=300, M=8, ef_construction=100, random_seed=1)
    index.add_items(data)
    q = data[:20] + 0.05 * rng.standard_normal((20, 8)).astype(np.float32)
    exact = exact_topk(data, q, 5)
    rows = sweep_ef(index, q, exact, efs=(5, 300), k=5, rounds=2)
    assert [r.ef for r in rows] == [5, 300]
    assert rows[1].recall == 1.0  # ef = the whole graph: exact
    assert all(r.qps > 0 and len(r.rounds_qps) == 2 for r in rows)


def test_ef_for_recall_picks_the_smallest_ef_reaching_the_target():
    rows = [EfRow(16, 0.90, 1, 1, []), EfRow(32, 0.991, 1, 1, []), EfRow(64, 0.995, 1, 1, [])]
    assert ef_for_recall(rows, 0.99) == 32
    assert ef_for_recall(rows, 0.999) is None


def test_synthetic_points_are_unit_clusters_around_their_parents_and_deterministic():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    chunks = list(synthetic_chunks(base, 250, subspace=4, sigma=0.3, seed=5, chunk=100))
    assert [c[0] for c in chunks] == [0, 100, 200] and sum(len(c[1]) for c in chunks) == 250
    points = np.vstack([c[1] for c in chunks])
    assert np.allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-5)
    nearest_base = (points @ base.T).max(axis=1)
    assert np.median(nearest_base) > 0.9  # near a real point (1/sqrt(1 + 0.3^2) = 0.96)
    again = np.vstack([c[1] for c in synthetic_chunks(base, 250, subspace=4, sigma=0.3, seed=5, chunk=100)])
    assert (again == points).all()
    # the noise of one parent lies in its own 4-d subspace
    make = subspace_noise_generator(base, subspace=4, sigma=0.3, seed=5)
    offsets = make(np.zeros(50, dtype=int), np.random.default_rng(2)) * 1.0
    offsets = offsets - offsets.mean(axis=0)
    assert np.linalg.matrix_rank(offsets, tol=1e-2) <= 5  # 4 directions (+ the normalisation's curvature)


# ---------------------------------------------------------------- FLOPs


def test_flops_of_a_hand_worked_tiny_transformer():
    # 1 layer, hidden 2, FFN 4, 1 head, 3 tokens, projection 2 -> 5:
    #   Q, K, V, O: 4 x (3*2*2) = 48;  scores 3*2*3 = 18, context 3*3*2 = 18;
    #   FFN 3*2*4 + 3*4*2 = 48;  projection 1*2*5 = 10  -> 142 multiply-adds, 284 FLOPs
    tiny = flops.Arch("tiny", layers=1, hidden=2, ffn=4, heads=1, projection_out=5)
    assert flops.macs(tiny, 3) == 142
    assert flops.flops(tiny, 3) == 284
    two_layers = flops.Arch("tiny2", layers=2, hidden=2, ffn=4, heads=1)
    assert flops.macs(two_layers, 3) == 2 * (142 - 10)
    # heads split the attention products but do not change their cost
    heads2 = flops.Arch("tiny-2-heads", layers=1, hidden=2, ffn=4, heads=2, projection_out=5)
    assert flops.macs(heads2, 3) == 142
    with pytest.raises(ValueError):
        flops.matmuls(flops.Arch("bad", 1, 3, 4, 2), 3)


def test_flops_of_the_two_encoders_at_8_tokens():
    # teacher: 12 x (4*8*768^2 + 2*8*768*3072 + 2*8^2*768) = 680,656,896 multiply-adds
    assert flops.macs(flops.TEACHER, 8) == 680_656_896
    # student: 6 x (4*8*384^2 + 2*8*384*1536 + 2*8^2*384) + 384*768 = 85,524,480
    assert flops.macs(flops.STUDENT, 8) == 85_524_480
    assert flops.flops(flops.TEACHER, 8) / flops.flops(flops.STUDENT, 8) == pytest.approx(7.96, abs=0.01)


def test_floor_divides_each_matmul_by_its_own_rate():
    tiny = flops.Arch("tiny", layers=1, hidden=2, ffn=4, heads=1, projection_out=5)
    shapes = {mm.shape for mm in flops.matmuls(tiny, 3)}
    # every shape at 1 GFLOP/s except the FFN up-projection at 2
    rates = {"shapes": {flops._key(s): {"numpy_fp32": 2.0 if s == (1, 3, 2, 4) else 1.0} for s in shapes},
             "peak": {"size": 8, "numpy_fp32": 4.0}}
    row = flops.floors(tiny, 3, rates)
    assert row["peak_floor_ms_fp32"] == pytest.approx(284 / 4e9 * 1e3)
    ffn_up = 2 * 3 * 2 * 4
    assert row["shape_floor_ms_numpy_fp32"] == pytest.approx(((284 - ffn_up) / 1e9 + ffn_up / 2e9) * 1e3)


def test_measured_latency_is_set_against_the_floor_of_the_nearest_token_count():
    floor_rows = {"student": [{"tokens": 8, "shape_floor_ms_ort_fp32": 1.0, "shape_floor_ms_ort_int8": 0.5,
                               "shape_floor_ms_numpy_fp32": 2.0, "peak_floor_ms_fp32": 0.8, "peak_floor_ms_int8": 0.4},
                              {"tokens": 16, "shape_floor_ms_ort_fp32": 2.0, "shape_floor_ms_ort_int8": 1.0,
                               "shape_floor_ms_numpy_fp32": 4.0, "peak_floor_ms_fp32": 1.6, "peak_floor_ms_int8": 0.8}]}
    bench = {"rows": {"student_fp32": {"batch1_median_ms": 5.0}, "student_int8": {"batch1_median_ms": 2.0}},
             "tokens": {"student": 14}}
    out = flops.vs_measured(floor_rows, bench)
    assert out["student_fp32"]["tokens"] == 16 and out["student_fp32"]["x_above_shape_floor"] == pytest.approx(2.5)
    assert out["student_int8"]["x_above_shape_floor"] == pytest.approx(2.0)
    assert out["student_int8"]["x_above_peak_floor"] == pytest.approx(2.5)


def test_rates_are_measured_at_tiny_sizes():
    assert flops.numpy_rate(1, 4, 8, 4, min_time_s=0.005, repeats=2) > 0
    assert flops.numpy_rate(3, 4, 8, 4, min_time_s=0.005, repeats=2) > 0
    pytest.importorskip("onnxruntime")
    rates = flops.onnx_rates(4, 16, 8, min_time_s=0.005, repeats=2)
    assert set(rates) == {"ort_fp32", "ort_int8"} and all(v > 0 for v in rates.values())


def test_arch_is_read_from_the_onnx_initializers(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    inits = []
    for layer in range(3):
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), f"transformer.encoder.layer.{layer}.output.dense.bias"))
        inits.append(numpy_helper.from_array(np.zeros(16, np.float32), f"transformer.encoder.layer.{layer}.intermediate.dense.bias"))
    inits.append(numpy_helper.from_array(np.zeros((6, 4), np.float32), "projection.weight"))
    graph = helper.make_graph([], "g", [], [], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    arch = flops.arch_of_onnx(path, "tiny", heads=2)
    assert (arch.layers, arch.hidden, arch.ffn, arch.heads, arch.projection_out) == (3, 4, 16, 2, 6)
