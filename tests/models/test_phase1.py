"""Phase 1 on a real slice: the teacher's fine-tune learns, resumes, produces a folder the
rest of the pipeline takes as a teacher, and the adoption check compares honestly."""

import json

import pytest
import torch

from models import data as data_mod
from models.distill.losses import info_nce
from models.distill.phase1 import Phase1Config, finetune_teacher, judge, train_pairs
from models.distill.students import get_spec, make_student
from models.distill.teacher_vectors import teacher_key
from models.encoders import load_teacher, tokenizer_path
from models.eval.metrics import RELEVANT
from models.splits import split_of
from retrieval.onnx_encoder import load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs():
    queries, positives = train_pairs()
    return queries[:16], [p[:1] for p in positives[:16]]


def _batch_loss(model, queries, titles) -> float:
    tok = load_tokenizer(tokenizer_path("teacher"))

    def encode(texts):
        enc = tok.encode_batch(texts)
        return model(torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc]))

    with torch.no_grad():
        return float(info_nce(encode(queries), encode(titles), None, 0.05, positive_ids=titles))


def test_train_pairs_are_train_split_and_relevant():
    queries, positives = train_pairs()
    judged = data_mod.load_sample_judgments()
    products = data_mod.load_sample("products")
    title_of = dict(zip(products.ids, products.texts))
    assert len(queries) > 1000
    for query, titles in zip(queries[:500], positives[:500]):
        assert split_of(query) == "train"
        relevant = {title_of[d] for d, r in judged.by_query[query].items() if r >= RELEVANT and d in title_of}
        assert titles and set(titles) <= relevant


def test_finetune_learns_resumes_and_yields_a_teacher_folder(pairs, tmp_path, capsys):
    queries, positives = pairs
    titles = [p[0] for p in positives]
    before = _batch_loss(load_teacher(), queries, titles)
    config = Phase1Config(out=str(tmp_path / "p1"), lr=1e-4, batch_size=8, max_steps=2, checkpoint_every=1,
                          warmup_share=0.0, threads=2)
    finetune_teacher(config, pairs)
    assert json.loads((tmp_path / "p1" / "info.json").read_text())["step"] == 2
    config.max_steps = 4  # a longer budget: resumes from step 2, does not start over
    folder = finetune_teacher(config, pairs)
    info = json.loads((tmp_path / "p1" / "info.json").read_text())
    assert info["step"] == 4 and info["done"]

    tuned = load_teacher(folder)
    after = _batch_loss(tuned, queries, titles)
    assert after < before, (before, after)
    # The folder is a teacher in its own right: its own cache key, and cut students start from it.
    assert teacher_key(folder=folder) != teacher_key()
    student = make_student(get_spec("mpnet-l2"), teacher_folder=folder)
    first = "encoder.layer.0.attention.attn.q.weight"
    assert torch.equal(student.transformer.state_dict()[first], tuned.transformer.state_dict()[first])
    assert not torch.equal(student.transformer.state_dict()[first], load_teacher().transformer.state_dict()[first])

    verdict = judge(folder, threads=2, other_titles=50, queries_limit=12)
    assert verdict["queries"] == 12 and verdict["titles"] >= 12 + 50
    assert verdict["adopt"] == (verdict["finetuned"]["ndcg_at_10"] > verdict["original"]["ndcg_at_10"])
    saved = (tmp_path / "p1" / "judgement.json").stat().st_mtime_ns
    assert judge(folder, threads=2, other_titles=50, queries_limit=12) == verdict
    assert (tmp_path / "p1" / "judgement.json").stat().st_mtime_ns == saved  # read back, not redone

    # Other settings in the same folder (a hard negative a pair): not resumed from the run above
    # (whose model they never trained), trained afresh from the packaged teacher.
    capsys.readouterr()
    config.hard_negatives, config.max_steps = 1, 1  # one step is enough to differ
    again = load_teacher(finetune_teacher(config, pairs))
    assert "holds a run with other settings; starting afresh" in capsys.readouterr().out
    assert json.loads((tmp_path / "p1" / "info.json").read_text())["config"]["hard_negatives"] == 1
    assert not torch.equal(again.transformer.state_dict()[first], tuned.transformer.state_dict()[first])


def test_hard_negatives_are_the_querys_own_judged_misses():
    from models.distill.phase1 import train_negatives

    queries, positives = train_pairs()
    negatives = train_negatives(queries[:300])
    judged = data_mod.load_sample_judgments()
    title_of = dict(zip(*(lambda t: (t.ids, t.texts))(data_mod.load_sample("products"))))
    assert sum(map(len, negatives)) > 50  # the raters' near misses exist for many train queries
    for query, titles, good in zip(queries, negatives, positives):
        misses = {title_of[d] for d, r in judged.by_query[query].items() if r < 2.0 and d in title_of}
        assert set(titles) == misses and not set(titles) & set(good)
