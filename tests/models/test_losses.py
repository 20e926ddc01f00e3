"""Training objectives against small hand-worked cases."""

import math

import pytest
import torch

from models.distill.losses import info_nce, l2_loss, ranking_kl


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True)


def test_l2_loss_hand_worked():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert l2_loss(a, b).item() == pytest.approx((2.0 + 0.0) / 2)


def test_info_nce_hand_worked():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 0.5
    # row 0 logits [1, 0.6]/t, target 0; row 1 logits [0, 0.8]/t, target 1
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert info_nce(q, p, temperature=t).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_info_nce_hard_negatives_and_shared_positive_mask():
    q = unit([1.0, 0.0], [1.0, 0.1])
    p = unit([1.0, 0.0], [1.0, 0.0])  # both queries share one positive keyword
    masked = info_nce(q, p, temperature=0.1, positive_ids=[7, 7])
    # with the duplicate masked, each query sees only its own positive: loss 0
    assert masked.item() == pytest.approx(0.0, abs=1e-6)
    assert info_nce(q, p, temperature=0.1).item() > 0.5  # unmasked: a false negative
    hard = unit([0.0, 1.0]).expand(2, 1, 2)
    assert info_nce(q, p, hard, 0.1, [7, 7]).item() > masked.item()


def test_ranking_kl_zero_when_student_ranks_like_teacher_and_positive_otherwise():
    cands = unit([1.0, 0.0], [0.0, 1.0], [0.7, 0.7]).unsqueeze(0)
    teacher = unit([1.0, 0.2])
    assert ranking_kl(teacher, teacher, cands).item() == pytest.approx(0.0, abs=1e-6)
    assert ranking_kl(unit([0.2, 1.0]), teacher, cands).item() > 0.1
