"""The product's student, built as the product builds it: ``hlm build --profile tiny``
trains the static student through phases 2 and 3 in the build, exports it, and the gate
(the build's own code, enforced at tests/conftest.py's STATIC_GATE_SHARE, no override)
marks it servable. Here its quality is scored again, beside its untrained table, on the
gate's judged dev queries (never trained on): a student whose training, weights, table or
export broke falls below these floors.

Measured (busy 2-core machine, 80 gate queries): teacher nDCG@10 0.523; the trained student
0.506-0.521 (0.967-0.995x the teacher over four step budgets, models/profiles.py); its
untrained table 0.327 (0.625x).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from artifact.manifest import encoder_model, verify
from retrieval.onnx_encoder import OnnxEncoder, load_tokenizer

pytestmark = pytest.mark.slow

# Floors with a margin below what today's build measures (module doc): the trained student
# keeps >= 0.9x the teacher (the gate's share here) and beats its untrained table by >= 0.1
# nDCG@10 (measured: +0.18 to +0.19).
MIN_SHARE_OF_TEACHER = 0.9
MIN_GAIN_OVER_UNTRAINED = 0.1


def open_encoder(root, name):
    enc = verify(root, checksums=False)["encoders"][name]
    return OnnxEncoder(root / encoder_model(enc, "fp32"), root / enc["tokenizer"], enc["max_length"])


class TorchEncoder:
    """encode_many over a PyTorch sentence encoder (what the gate calls)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def encode_many(self, texts):
        from models.export import torch_encode

        return torch_encode(self.model, self.tokenizer, list(texts))


def untrained_table(artifact, texts):
    """The static student before phases 2 and 3: each token's row the teacher's vector of it
    alone, uniform weights. On ``texts`` it is what the whole vocabulary's table gives."""
    from models.distill.static import StaticStudent, special_token_ids, text_tokens, token_vectors

    tok_path = artifact / "teacher" / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path)
    special, cls_id, sep_id = special_token_ids(tokenizer)
    ids = np.unique(np.concatenate([text_tokens(texts, tokenizer), special]))
    table = np.zeros((tokenizer.get_vocab_size(with_added_tokens=True), 768), dtype=np.float32)
    table[ids] = token_vectors(open_encoder(artifact, "teacher"), ids, cls_id, sep_id)
    model = StaticStudent(table, special, present=ids)
    model.eval()
    return TorchEncoder(model, tok_path)


@pytest.fixture(scope="module")
def scored(static_artifact, data_dir):
    """The gate's scores (models/build.py's own ``_gate``) of the served student, its
    untrained table and the teacher, on the tiny profile's gate queries and pool."""
    from models.build import _gate, _gate_queries
    from models.distill.teacher_vectors import teacher_key
    from models.embedding_cache import EmbeddingCache
    from models.inputs import select_inputs
    from models.profiles import get_profile

    profile = get_profile("tiny")
    inputs = select_inputs(profile, data_dir)
    teacher = open_encoder(static_artifact, "teacher")
    cache = EmbeddingCache(teacher_key(profile.max_length), teacher.dim)
    gate_queries = _gate_queries(profile)[0]
    trained = _gate(profile, inputs, teacher, cache, open_encoder(static_artifact, "student"), 0.98, False)
    untrained = _gate(profile, inputs, teacher, cache, untrained_table(static_artifact, gate_queries), 0.98, False)
    print(f"\ntiny static build: teacher {trained.teacher:.4f}, trained student {trained.student:.4f} "
          f"({trained.ratio:.3f}x), untrained table {untrained.student:.4f} ({untrained.ratio:.3f}x), "
          f"{len(gate_queries)} gate queries")
    return {"teacher": trained.teacher, "trained": trained.student, "untrained": untrained.student,
            "queries": len(gate_queries)}


def test_the_build_trains_the_static_student_and_the_gate_marks_it_servable(static_artifact, command_log,
                                                                            static_gate_share):
    manifest = verify(static_artifact)
    student = manifest["encoders"]["student"]
    # What ships is phase 3's checkpoint (the build trained phase 2, then phase 3 from it).
    assert student["model"].startswith("static trained by hlm distill (phase3, step "), student["model"]
    assert student["onnx_int8"] is None and student["default_precision"] == "fp32"
    assert student["base_model"] == "sentence-transformers/all-mpnet-base-v2"
    gate = manifest["gate"]
    assert gate["passed"] and manifest["servable"] and not gate["overridden"], gate
    assert gate["required"] == static_gate_share and gate["ratio"] >= static_gate_share
    log = command_log(static_artifact)
    # Both phases ran in this build (a fresh distillation cache), phase 3 from phase 2.
    assert "distill static" in log and "/phase2" in log.split("[distill] starting from")[1].splitlines()[0], log[-3000:]
    assert manifest["eval"]["parity"]["student_onnx_vs_torch"]["min_cosine"] > 0.9999


def test_the_trained_student_keeps_most_of_the_teacher_and_beats_its_untrained_table(static_artifact, scored):
    manifest = json.loads((static_artifact / "manifest.json").read_text())
    # The gate the build recorded is the score of the student it exported (the margin: the
    # pool's teacher vectors may come from another cache, batched otherwise).
    assert scored["trained"] == pytest.approx(manifest["gate"]["student"], abs=5e-3)
    assert scored["teacher"] == pytest.approx(manifest["gate"]["teacher"], abs=5e-3)
    assert scored["queries"] >= 60
    assert scored["trained"] >= MIN_SHARE_OF_TEACHER * scored["teacher"], scored
    assert scored["trained"] >= scored["untrained"] + MIN_GAIN_OVER_UNTRAINED, scored


def student_weights(artifact) -> dict:
    """The exported student's initializers: table.weight, log_weight, keep."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(artifact / "student" / "model.onnx").graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def test_the_served_graph_is_the_weighted_mean_of_its_trained_table(static_artifact):
    """What the service runs is the documented formula over the trained values (a forward
    pass that dropped the learned token weights, or weights left untrained, differ): each
    query's vector is the mean of its tokens' rows weighted by exp(log_weight) x keep, L2
    normalised; training moved the weights, and down-weights the most frequent words."""
    from models.build import _gate_queries
    from models.profiles import get_profile

    w = student_weights(static_artifact)
    assert {"table.weight", "log_weight", "keep"} <= set(w), sorted(w)
    table, log_weight, keep = w["table.weight"], w["log_weight"], w["keep"]
    tokenizer = load_tokenizer(static_artifact / "student" / "tokenizer.json")
    queries = _gate_queries(get_profile("tiny"))[0][:40] + ["cordless drill", "paint", "x"]
    reference = []
    for query in queries:
        ids = np.array(tokenizer.encode(query).ids)
        weights = np.exp(log_weight[ids]) * keep[ids]
        v = (table[ids] * weights[:, None]).sum(0) / max(weights.sum(), 1e-9)
        reference.append(v / max(np.linalg.norm(v), 1e-12))
    served = open_encoder(static_artifact, "student").encode_many(queries)
    assert (served * np.array(reference)).sum(1).min() > 0.99999
    present = keep > 0
    assert log_weight[present].std() > 0.01, log_weight[present].std()  # trained, not the uniform start
    frequent = [tokenizer.token_to_id(t) for t in ("the", "and", "in", "for", "with")]
    assert log_weight[frequent].max() < np.median(log_weight[present]), log_weight[frequent]


def test_tokens_outside_the_table_weigh_nothing_and_known_ones_are_served(static_artifact):
    """The tiny table's one departure from demo (models/profiles.py): a token no build text
    holds adds nothing to a query; a query made only of such tokens still gets a vector. The
    table's tokens are read from the exported graph (their ``keep`` weight is not zero)."""
    keep = student_weights(static_artifact)["keep"]
    tokenizer = load_tokenizer(static_artifact / "student" / "tokenizer.json")
    held = int((keep > 0).sum())
    assert 1000 < held < 0.5 * len(keep), held  # the build's texts' tokens, not the vocabulary
    known = tokenizer.encode("cordless drill").ids[1:-1]
    assert all(keep[i] > 0 for i in known)
    absent = [w for w in (tokenizer.id_to_token(i) for i in np.flatnonzero(keep == 0)[::50])
              if w.isalpha() and w.isascii() and len(w) > 3 and tokenizer.encode(w).ids[1:-1] == [tokenizer.token_to_id(w)]]
    assert len(absent) >= 3, absent
    student = open_encoder(static_artifact, "student")
    base, *others = student.encode_many(["cordless drill"] + [f"cordless drill {w}" for w in absent[:3]])
    assert all(float(base @ o) > 0.9999 for o in others)
    alone = student.encode_many([" ".join(absent[:3])])[0]
    assert np.isfinite(alone).all() and abs(float(np.linalg.norm(alone)) - 1.0) < 1e-4
