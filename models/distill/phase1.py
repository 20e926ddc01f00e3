"""Phase 1: fine-tune the teacher on judged train pairs, and keep it only if it is better.

Why: on this data the off-the-shelf teacher (all-mpnet-base-v2) is no better than raw
MiniLM (docs/RESULTS.md), so a student distilled from it is capped below what a user
could get with no distillation at all. In-domain fine-tuning is where a strong teacher
comes from.

What: the whole teacher is trained with in-batch-negative InfoNCE (the
sentence-transformers "MultipleNegativesRanking" objective, scale 20) on (train query,
relevant product title) pairs: relevance >= 2.33, train split only, one pair per query per
batch so a batch never holds the same query twice. AdamW, warm-up then linear decay, a
step and a wall-clock budget, checkpoints every ``checkpoint_every`` steps so a killed run
resumes. The word-embedding table stays frozen (as in the student trainer) so words
unseen in training keep their pre-trained vectors.

Output: ``<out>/model``, a Hugging Face folder shaped like the packaged teacher (config,
safetensors, tokenizer files) with a ``.complete`` marker holding the weights' sha256:
``load_teacher(folder)``, the embedding-cache key and the ONNX export take it as they are.

Decision (``judge``): both teachers score the dev queries against the same title set (the
dev queries' judged products plus a fixed sample of other titles, so the check costs
minutes, not the full re-encode); the build adopts the fine-tuned teacher only when its
nDCG@10 is higher. Every vector goes through the embedding cache, so the titles encoded
here are not encoded again when the build re-encodes the corpus.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from models import data as data_mod
from artifact.manifest import sha256_file, staged_folder
from models.eval.metrics import RELEVANT
from models.splits import split_of


@dataclass
class Phase1Config:
    out: str = "runs/teacher/phase1"
    lr: float = 2e-5
    batch_size: int = 32
    max_steps: int = 140
    minutes: float = 17.0
    warmup_share: float = 0.1
    temperature: float = 0.05  # scale 20, the sentence-transformers default
    checkpoint_every: int = 50
    threads: int = 2
    seed: int = 0
    # Hard negatives per pair beside the in-batch ones: titles the raters judged not relevant
    # (< 2) to that query (the Home Depot engine's own near misses, free: no encoding);
    # a query with fewer gets random titles of other queries' positives.
    hard_negatives: int = 0
    # Steps at which a complete copy of the model is kept in <out>-at-<step>/model, so one run
    # gives a curve of dev nDCG@10 against steps (scripts/phase1_curve.py judges each copy).
    snapshot_at: tuple[int, ...] = ()


def train_pairs(products: data_mod.TextTable | None = None) -> tuple[list[str], list[list[str]]]:
    """Train-split judged queries and the titles of their relevant products."""
    products = products or data_mod.load_sample("products")
    title_of = dict(zip(products.ids, products.texts))
    judged = data_mod.load_sample_judgments()
    queries, positives = [], []
    for query, graded in judged.by_query.items():
        if split_of(query) != "train":
            continue
        titles = [title_of[d] for d, r in graded.items() if r >= RELEVANT and d in title_of]
        if titles:
            queries.append(query)
            positives.append(titles)
    return queries, positives


def snapshot_folder(out: Path, step: int) -> Path:
    """Where the copy of step ``step`` is kept: beside ``out`` (each checkpoint replaces ``out`` whole)."""
    return out.parent / f"{out.name}-at-{step}"


def train_negatives(queries: list[str], products: data_mod.TextTable | None = None) -> list[list[str]]:
    """Per train query, the titles of the products its raters judged not relevant (< 2)."""
    products = products or data_mod.load_sample("products")
    title_of = dict(zip(products.ids, products.texts))
    judged = data_mod.load_sample_judgments()
    return [[title_of[d] for d, r in judged.by_query[q].items() if r < 2.0 and d in title_of] for q in queries]


def finetune_teacher(config: Phase1Config, pairs: tuple[list[str], list[list[str]]] | None = None) -> Path:
    """Train (or resume) phase 1; returns the fine-tuned model folder."""
    import torch

    from models.distill.losses import info_nce
    from models.distill.train import _schedule, _tokenize, optimizer_step
    from models.encoders import load_teacher, tokenizer_path
    from models.model_files import teacher_dir
    from retrieval.onnx_encoder import load_tokenizer
    from tqdm import tqdm

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    if _finished(out, config):
        return out / "model"
    queries, positives = pairs or train_pairs()
    if not queries:
        raise ValueError("phase 1 found no judged train pairs")
    negatives = train_negatives(queries) if config.hard_negatives else None
    every_title = [t for titles in positives for t in titles]
    tokenizer = load_tokenizer(tokenizer_path("teacher"))
    resuming = (out / "state.pt").is_file()
    if resuming and not _same_settings(out, config):
        # A checkpoint of other settings (negatives, batch, rate): resuming it would hand back a
        # model these settings never trained, so this run starts from the packaged teacher.
        print(f"[phase1] {out} holds a run with other settings; starting afresh")
        resuming = False
    model = load_teacher(out / "model" if resuming else teacher_dir())
    model.transformer.embeddings.word_embeddings.weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.01)
    warmup = int(config.max_steps * config.warmup_share)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config.max_steps, warmup))
    step, elapsed_before, history = 0, 0.0, []
    if resuming:
        state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed_before, history = state["step"], state["elapsed_s"], state["history"]
        print(f"[phase1] resuming {out} at step {step}")
    model.train()
    rng = random.Random(config.seed + step)
    started = time.perf_counter()
    running = None

    def checkpoint(done: bool, where: Path = out) -> None:
        elapsed = elapsed_before + time.perf_counter() - started
        with staged_folder(where) as tmp:
            model.transformer.save_pretrained(tmp / "model")
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
                if (teacher_dir() / name).is_file():
                    shutil.copy2(teacher_dir() / name, tmp / "model" / name)
            # The marker the embedding cache keys on (models.embedding_cache.model_key).
            (tmp / "model" / ".complete").write_text(sha256_file(tmp / "model" / "model.safetensors") + "\n")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "elapsed_s": elapsed, "history": history}, tmp / "state.pt")
            info = {"config": asdict(config), "step": step, "elapsed_s": round(elapsed, 1), "done": done,
                    "pairs": len(queries), "history": history[-20:]}
            (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")

    bar = tqdm(total=config.max_steps, initial=step, desc="phase 1 teacher", unit="step", mininterval=10)
    while step < config.max_steps:
        if (elapsed_before + time.perf_counter() - started) / 60 > config.minutes:
            print(f"[phase1] time budget of {config.minutes} min reached at step {step}")
            break
        rows = rng.sample(range(len(queries)), min(config.batch_size, len(queries)))
        titles = [rng.choice(positives[i]) for i in rows]
        q_ids, q_mask = _tokenize(tokenizer, [queries[i] for i in rows])
        hard = []
        if negatives is not None:
            for i in rows:
                own = rng.sample(negatives[i], min(config.hard_negatives, len(negatives[i])))
                hard += own + [rng.choice(every_title) for _ in range(config.hard_negatives - len(own))]
        t_ids, t_mask = _tokenize(tokenizer, titles + hard)
        t_vectors = model(t_ids, t_mask)
        hard_vectors = t_vectors[len(titles):].reshape(len(rows), config.hard_negatives, -1) if hard else None
        loss = info_nce(model(q_ids, q_mask), t_vectors[:len(titles)], hard_vectors, config.temperature,
                        positive_ids=titles)
        optimizer_step(loss, optimizer, scheduler, trainable)
        step += 1
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
            history.append({"step": step, "nce": round(running, 5)})
        if step % config.checkpoint_every == 0:
            checkpoint(done=False)
        if step in config.snapshot_at and not (snapshot_folder(out, step) / "model" / ".complete").is_file():
            checkpoint(done=False, where=snapshot_folder(out, step))
    bar.close()
    model.eval()
    checkpoint(done=True)
    return out / "model"


def run_phase1(config: Phase1Config, other_titles: int = 6000, queries_limit: int | None = None) -> tuple[Path | None, dict]:
    """Train (or resume) phase 1, judge it, say so; the folder if adopted (else None) and the verdict."""
    folder = finetune_teacher(config)
    verdict = judge(folder, config.threads, other_titles, queries_limit)
    verdict["step"] = json.loads((Path(config.out) / "info.json").read_text())["step"]
    before, after = verdict["original"]["ndcg_at_10"], verdict["finetuned"]["ndcg_at_10"]
    decision = "adopted" if verdict["adopt"] else "not adopted: the packaged teacher stays"
    print(f"  phase 1: dev nDCG@10 {before:.4f} -> {after:.4f} ({verdict['ratio']:.3f}x) over "
          f"{verdict['titles']} titles; {decision}")
    return (folder if verdict["adopt"] else None), verdict


# What a checkpoint must share with a run to be resumed by it (a longer step budget resumes), and
# what a finished run must share to be taken as is.
RESUMABLE_IF_SAME = ("lr", "batch_size", "hard_negatives", "seed")
FINISHED_IF_SAME = ("max_steps", *RESUMABLE_IF_SAME)


def _same_settings(out: Path, config: Phase1Config, keys: tuple[str, ...] = RESUMABLE_IF_SAME) -> bool:
    info_path = out / "info.json"
    if not info_path.is_file():
        return False
    saved = json.loads(info_path.read_text()).get("config", {})
    return all(saved.get(k, 0) == getattr(config, k) for k in keys)


def _finished(out: Path, config: Phase1Config) -> bool:
    """A finished run with the same settings: nothing to train."""
    info_path = out / "info.json"
    return (info_path.is_file() and bool(json.loads(info_path.read_text()).get("done"))
            and _same_settings(out, config, FINISHED_IF_SAME))


def judge(folder: Path, threads: int = 2, other_titles: int = 6000, queries_limit: int | None = None, seed: int = 0) -> dict:
    """Dev nDCG@10 of the original and the fine-tuned teacher over one title set.

    The set: the dev queries' (all, or the first ``queries_limit``) judged products plus
    ``other_titles`` titles drawn with a fixed seed, so unjudged distractors compete as
    they do over the full catalogue.
    Written to ``<folder>/../judgement.json`` and read back on reruns.
    """
    from models.distill.teacher_vectors import TeacherVectors
    from models.eval.judged import JudgedEval, judged_queries

    path = Path(folder).parent / "judgement.json"
    marker = (Path(folder) / ".complete").read_text().strip()
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("weights_sha256") == marker and saved.get("setting") == [other_titles, queries_limit, seed]:
            return saved
    products = data_mod.load_sample("products")
    title_of = dict(zip(products.ids, products.texts))
    queries, judgments = judged_queries(products.ids, "dev", queries_limit)
    pool = list(dict.fromkeys(d for graded in judgments for d in graded))
    chosen = set(pool)
    rest = [d for d in products.ids if d not in chosen]
    pool += random.Random(seed).sample(rest, min(other_titles, len(rest)))
    titles = [title_of[d] for d in pool]
    rows = {}
    for name, vectors in (("original", TeacherVectors(threads)), ("finetuned", TeacherVectors(threads, folder=folder))):
        scored = JudgedEval(queries, judgments, pool, vectors(titles, f"judge titles ({name} teacher)"))
        rows[name] = scored.score(lambda texts, v=vectors, n=name: v(list(texts), f"dev queries ({n} teacher)"))
    gain = rows["finetuned"]["ndcg_at_10"] / rows["original"]["ndcg_at_10"]
    verdict = {
        "weights_sha256": marker, "setting": [other_titles, queries_limit, seed], "titles": len(pool), "queries": len(queries),
        "original": rows["original"], "finetuned": rows["finetuned"], "ratio": round(gain, 4), "adopt": gain > 1.0,
    }
    partial = path.with_suffix(".json.partial")  # written whole, then renamed: never half a verdict
    partial.write_text(json.dumps(verdict, indent=2) + "\n")
    os.replace(partial, path)
    return verdict

