"""The static student (models/distill/static.py): its ONNX export is its PyTorch model, its
answers do not depend on batch-mates, and its teacher initialisation puts a one-token
query at the teacher's own vector for that token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.distill.static import StaticStudent, special_token_ids, token_vectors
from models.encoders import tokenizer_path
from models.export import export_onnx, torch_encode
from retrieval.exact import exact_top_k
from retrieval.onnx_encoder import OnnxEncoder, load_tokenizer

QUERIES = [
    "cordless drill", "paint", "how to fix a leaky faucet in the bathroom", "18v lithium ion battery charger",
    "outdoor led flood light with motion sensor and dusk to dawn photocell", "x", "2x4 lumber 8 ft",
    "what is the best way to remove rust from a cast iron skillet without steel wool", "grout",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tokenizer_path("teacher"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """A static student with a random table, random token weights and a non-zero head, exported."""
    rng = np.random.default_rng(0)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    table = rng.normal(size=(vocab, 768)).astype(np.float32)
    special, _, _ = special_token_ids(tokenizer)
    model = StaticStudent(table, special, head=True)
    with torch.no_grad():
        model.log_weight.copy_(torch.from_numpy(rng.normal(0, 0.5, vocab).astype(np.float32)))
        model.head.weight.copy_(torch.from_numpy(rng.normal(0, 0.02, (768, 768)).astype(np.float32)))
    model.eval()
    path = tmp_path_factory.mktemp("static") / "model.onnx"
    export_onnx(model, path, tokenizer_path("teacher"))
    return model, OnnxEncoder(path, tokenizer_path("teacher"))


def test_onnx_export_matches_pytorch(exported):
    model, encoder = exported
    onnx = encoder.encode(QUERIES).vectors
    torch_vectors = torch_encode(model, tokenizer_path("teacher"), QUERIES)
    cosine = (onnx * torch_vectors).sum(axis=1)
    assert cosine.min() > 0.99999, cosine
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)


def test_answers_do_not_depend_on_batch_mates(exported):
    _, encoder = exported
    alone = np.vstack([encoder.encode([q]).vectors for q in QUERIES])
    rng = np.random.default_rng(1)
    keywords = rng.normal(size=(5000, 768)).astype(np.float32)
    keywords /= np.linalg.norm(keywords, axis=1, keepdims=True)
    for trial in range(5):
        order = rng.permutation(len(QUERIES))
        batched = encoder.encode([QUERIES[i] for i in order]).vectors  # padded to the longest
        back = np.empty_like(batched)
        back[order] = batched
        assert np.abs(back - alone).max() < 1e-6
        assert (exact_top_k(keywords, back, 10) == exact_top_k(keywords, alone, 10)).all()


def test_initialisation_puts_a_one_token_query_at_the_teachers_vector(small_artifact, tokenizer):
    teacher = OnnxEncoder(small_artifact / "teacher" / "model.onnx", small_artifact / "teacher" / "tokenizer.json")
    special, cls_id, sep_id = special_token_ids(tokenizer)
    words = ["drill", "paint", "hammer", "window"]
    ids = [tokenizer.encode(w).ids[1:-1] for w in words]
    assert all(len(i) == 1 for i in ids), ids  # each word is one token of the teacher's vocabulary
    ids = np.array([i[0] for i in ids])
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    table = np.zeros((vocab, 768), dtype=np.float32)
    table[ids] = token_vectors(teacher, ids, cls_id, sep_id)
    table[special] = token_vectors(teacher, np.array(special), cls_id, sep_id)
    student = StaticStudent(table, special).eval()
    mine = torch_encode(student, tokenizer_path("teacher"), words)
    theirs = teacher.encode(words).vectors
    cosine = (mine * theirs).sum(axis=1)
    assert cosine.min() > 0.9999, cosine
    # ...and the words stay apart: each is nearest its own teacher vector.
    assert ((mine @ theirs.T).argmax(axis=1) == np.arange(len(words))).all()
