"""The small real build: a verified artifact whose encoders and index behave."""

import json
import shutil

import numpy as np
import pytest

from artifact.manifest import ArtifactError, encoder_model, verify
from retrieval.onnx_encoder import OnnxEncoder
from retrieval.base import SearchParams
from retrieval.hnsw import HnswIndex

pytestmark = pytest.mark.slow


def open_encoder(root, name, precision="fp32"):
    enc = verify(root, checksums=False)["encoders"][name]
    model = encoder_model(enc, precision)
    return OnnxEncoder(root / model, root / enc["tokenizer"], enc["max_length"])


def open_index(root):
    m = verify(root, checksums=False)["index"]
    return HnswIndex(root / m["path"], root / m["store"], m["dim"], m["ef"])


def test_artifact_verifies_and_describes_itself(small_artifact):
    manifest = verify(small_artifact)
    assert manifest["index"]["count"] == 500
    assert manifest["encoders"]["student"]["dim"] == manifest["encoders"]["teacher"]["dim"] == 768
    assert {"student/model.onnx", "student/model.int8.onnx", "teacher/model.onnx", "eval.json"} <= set(manifest["files"])
    tok = json.loads((small_artifact / "student/tokenizer.json").read_text())
    assert tok["padding"] is None  # fixed-length padding turned off


def test_teacher_finds_each_keyword_itself(small_artifact):
    teacher, index = open_encoder(small_artifact, "teacher"), open_index(small_artifact)
    texts = [text for _, text, _ in index.keywords()][::25]
    hits = index.search(teacher.encode(texts).vectors, SearchParams(k=1))
    assert [h[0].text for h in hits] == texts
    assert all(h[0].score > 0.99 for h in hits)


def heldout(data_dir) -> list[str]:
    """The build's held-out queries (dev split), chosen again the way the build chose them."""
    from models.inputs import select_inputs
    from models.profiles import get_profile

    return select_inputs(get_profile("small"), data_dir).heldout_queries


def keyword_vectors(root) -> np.ndarray:
    """The vectors stored in the artifact's hnswlib file, read with hnswlib itself."""
    import hnswlib

    m = verify(root, checksums=False)["index"]
    graph = hnswlib.Index(space="ip", dim=m["dim"])
    graph.load_index(str(root / m["path"]))
    return np.asarray(graph.get_items(list(range(m["count"]))), dtype=np.float32)


def test_student_agrees_with_teacher_far_above_chance(small_artifact, data_dir):
    """Recomputed here from the encoders and the stored vectors, not read from eval.json."""
    from models.eval.metrics import overlap_at_k
    from retrieval.exact import exact_top_k

    report = json.loads((small_artifact / "eval.json").read_text())
    queries = heldout(data_dir)
    assert len(queries) == report["heldout_queries"] == 100
    vectors = keyword_vectors(small_artifact)
    chance = 10 / len(vectors)
    assert report["chance_overlap_at_10"] == pytest.approx(chance)
    teacher_top = exact_top_k(vectors, open_encoder(small_artifact, "teacher").encode_many(queries), 10).tolist()
    for name, precision in (("student_fp32", "fp32"), ("student_int8", "int8")):
        top = exact_top_k(vectors, open_encoder(small_artifact, "student", precision).encode_many(queries), 10).tolist()
        overlap = float(np.mean([overlap_at_k(a, b, 10) for a, b in zip(top, teacher_top)]))
        assert overlap > 10 * chance, (name, overlap)
        # and the build reported what its encoders do (its teacher vectors came from the cache)
        assert report[name]["overlap_at_10"] == pytest.approx(overlap, abs=0.02), (name, overlap)


def test_onnx_matches_pytorch(small_artifact, data_dir):
    """The teacher's ONNX export against the packaged PyTorch teacher, and the int8 student
    against fp32, recomputed on the build's probe queries. (The student's closed-form fit is
    not kept in PyTorch; its ONNX graph is rebuilt in PyTorch from the ONNX weights and
    compared by tests/benchmarks/test_peers.py.)"""
    from models.encoders import load_teacher
    from models.export import torch_encode

    parity = json.loads((small_artifact / "eval.json").read_text())["parity"]
    probe = heldout(data_dir)[:64]
    teacher_onnx = open_encoder(small_artifact, "teacher").encode_many(probe[:16])
    teacher_torch = torch_encode(load_teacher(), small_artifact / "teacher/tokenizer.json", probe[:16])
    assert np.min(np.sum(teacher_onnx * teacher_torch, axis=1)) > 0.9999
    fp32 = open_encoder(small_artifact, "student").encode_many(probe)
    int8 = open_encoder(small_artifact, "student", "int8").encode_many(probe)
    cosine = np.sum(fp32 * int8, axis=1)
    assert cosine.mean() > 0.98
    assert parity["student_int8_vs_fp32"]["mean_cosine"] == pytest.approx(float(cosine.mean()), abs=1e-3)
    assert parity["student_onnx_vs_torch"]["min_cosine"] > 0.9999  # the build's own check, kept as reported


def test_int8_student_stays_close_to_fp32(small_artifact):
    queries = ["cordless drill", "how to fix a leaking faucet", "white paint semi gloss 1 gallon"]
    fp32 = open_encoder(small_artifact, "student").encode(queries).vectors
    int8 = open_encoder(small_artifact, "student", "int8").encode(queries).vectors
    assert np.all((fp32 * int8).sum(axis=1) > 0.97)


def test_corrupted_copy_is_refused(small_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_artifact, copy)
    with open(copy / "index/keywords.tsv", "r+b") as handle:
        handle.seek(20)
        handle.write(b"#")
    with pytest.raises(ArtifactError, match="index/keywords.tsv does not match its sha256"):
        verify(copy)


def test_build_with_in_build_distillation(data_dir, tmp_path):
    """The demo/full path: the student is trained inside the build (a few steps here)."""
    from models.build import build
    from models.profiles import get_profile

    profile = get_profile(
        "small", student="mpnet-l2", distill_phases=("3",), distill_minutes=(0.0, 2.0), distill_steps=(0, 3),
        product_selection="judged", judged_train_queries=40, gate_queries=20,
    )
    out = tmp_path / "distilled"
    manifest = build(profile, out, data_dir, threads=2, allow_below_gate=True)
    student = manifest["encoders"]["student"]
    assert student["model"].startswith("mpnet-l2 trained by hlm distill")
    assert student["base_model"] == "sentence-transformers/all-mpnet-base-v2"
    # MPNet's tokenizer (RoBERTa-style <s> … </s>), not MiniLM's
    assert json.loads((out / "student/tokenizer.json").read_text())["post_processor"]["type"] == "RobertaProcessing"
    assert manifest["eval"]["parity"]["student_onnx_vs_torch"]["min_cosine"] > 0.9999
    assert "gate" in manifest and manifest["gate"]["ratio"] is not None
