"""The training phases on a small real slice: no dev leakage, learning happens, and a
trained (or pruned) student exports to ONNX and matches its PyTorch output."""

import pytest
import torch

from models.distill.checkpoint import load_student_checkpoint, read_spec
from models.distill.prepare import build_training_data
from models.distill.students import get_spec, make_student, tokenizer_name
from models.distill.teacher_vectors import TeacherVectors
from models.distill.train import TrainConfig, train
from models.encoders import tokenizer_path
from models.export import cosine_parity, export_onnx, torch_encode
from models.splits import split_of
from retrieval.onnx_encoder import OnnxEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_data():
    return build_training_data(TeacherVectors(), products_limit=300, web_queries=40, queries_limit=120, kl_candidates=8)


def test_training_data_holds_no_dev_query(small_data):
    from models import data as data_mod

    judged = set(data_mod.load_sample_judgments().queries)
    msmarco = set(data_mod.load_sample("msmarco").texts)
    queries = [t for t in small_data.texts if t in judged or t in msmarco] + small_data.pair_queries
    assert queries, "expected some queries in the training data"
    assert all(split_of(q) == "train" for q in queries)
    assert len(small_data.pair_queries) == len(small_data.pair_positive) == len(small_data.pair_negatives)
    for positive, negatives in zip(small_data.pair_positive, small_data.pair_negatives):
        assert positive not in negatives


@pytest.fixture(scope="module")
def l2_checkpoint(small_data, tmp_path_factory):
    """Phase 2 (L2) of minilm-l3 for 40 steps from its fresh (seeded, random-projection) start."""
    out = tmp_path_factory.mktemp("phase2") / "ck"
    config = TrainConfig(student="minilm-l3", out=str(out), lr=1e-3, max_steps=40,
                         batch_size=32, checkpoint_every=20, minutes=10, threads=1)
    train(config, small_data)
    return out


def test_l2_phase_moves_student_towards_teacher_and_checkpoint_round_trips(small_data, l2_checkpoint):
    spec = get_spec("minilm-l3")
    probe = small_data.texts[:64]
    targets = small_data.text_targets[:64]
    before = make_student(spec)  # random projection: far from the teacher
    with torch.no_grad():
        start_cos = float((torch_encode(before, tokenizer_path("student"), probe) * targets).sum(1).mean())
    model = load_student_checkpoint(l2_checkpoint)
    end_cos = float((torch_encode(model, tokenizer_path("student"), probe) * targets).sum(1).mean())
    assert end_cos > start_cos + 0.1, (start_cos, end_cos)
    assert read_spec(l2_checkpoint)[1]["step"] == 40


def _projection(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.startswith("projection.")])


def test_contrastive_phase_runs_from_a_checkpoint(small_data, l2_checkpoint, tmp_path):
    """Phase 3 starts from phase 2's weights (``init``), not from a fresh student, and moves
    them: its result lies near the checkpoint it started from and far from a fresh start."""
    config = TrainConfig(student="minilm-l3", out=str(tmp_path / "p3"), init=str(l2_checkpoint), contrastive_weight=1.0,
                         l2_weight=0.5, max_steps=6, batch_size=16, minutes=5, threads=1)
    train(config, small_data)
    spec, info = read_spec(tmp_path / "p3")
    assert spec.name == "minilm-l3" and info["step"] == 6 and info["config"]["init"] == str(l2_checkpoint)
    start = _projection(load_student_checkpoint(l2_checkpoint))
    fresh = _projection(make_student(get_spec("minilm-l3")))
    after = _projection(load_student_checkpoint(tmp_path / "p3"))
    moved, from_fresh = float((after - start).norm()), float((fresh - start).norm())
    assert 0 < moved < from_fresh / 4, (moved, from_fresh)


@pytest.mark.parametrize("name", ["mpnet-l2", "minilm-l3"])
def test_pruned_student_exports_and_matches_pytorch(name, tmp_path):
    spec = get_spec(name)
    model = make_student(spec)
    assert len(model.transformer.encoder.layer) == spec.layers
    tok = tokenizer_path(tokenizer_name(spec))
    export_onnx(model, tmp_path / "s.onnx", tok)
    texts = ["cordless drill 18v", "how do i stop a leaking tap", "x"]
    onnx_vectors = OnnxEncoder(tmp_path / "s.onnx", tok).encode(texts).vectors
    parity = cosine_parity(onnx_vectors, torch_encode(model, tok, texts))
    assert parity["min_cosine"] > 0.9999
    assert onnx_vectors.shape == (3, 768)
