"""The student trainer (``hlm distill``): phases 2 and 3, and their mixtures.

One loop, the objective chosen by weights:
- phase 2 ("l2"): batches of unlabelled texts (train-split queries and keyword texts),
  loss = squared L2 distance to the teacher's vector (optionally + ranking KL over the
  teacher's top keywords, which targets overlap@k).
- phase 3 ("contrastive"): batches of judged train pairs (relevance >= 2.33), InfoNCE
  against the teacher's frozen product vectors with in-batch and mined hard negatives,
  plus a share of the L2 term so the student does not drift out of the teacher's space.

AdamW with linear warm-up and linear decay over a step budget (seeded, so the same inputs
give the same student on any machine); a wall-clock limit only as an upper guard, reported
in the checkpoint (``cut_short``) when it ends a run early. Optional validation on a held-out
slice of the training pool keeps the best step (``validate_every``). Checkpoints (model +
optimizer + scheduler + step) every few hundred steps, so a killed run resumes where it stopped (``--resume`` is the default when the folder exists).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.distill.checkpoint import read_spec, save_checkpoint
from models.distill.losses import info_nce, l2_loss, ranking_kl
from models.distill.students import get_spec, make_student, tokenizer_name
from models.encoders import tokenizer_path


@dataclass
class TrainConfig:
    student: str = "minilm-l6"
    out: str = "runs/students/minilm-l6"
    init: str | None = None  # start from this checkpoint (phase 3 starts from phase 2)
    teacher_folder: str | None = None  # a phase-1 fine-tuned teacher: cut students start from it
    # A static student whose table holds only these token ids (an .npy file of them): the
    # tiny test profile's (models/profiles.py). None = the whole vocabulary.
    table_tokens: str | None = None
    l2_weight: float = 1.0
    contrastive_weight: float = 0.0
    kl_weight: float = 0.0
    temperature: float = 0.05
    kl_temperature: float = 0.05
    hard_negatives: int = 4
    kl_candidates: int = 32
    lr: float = 1e-4
    warmup_share: float = 0.06
    batch_size: int = 64
    max_steps: int = 2000
    minutes: float = 30.0
    checkpoint_every: int = 200
    threads: int = 2
    # The word-embedding table is half of MiniLM's weights: freezing it halves the
    # optimizer's work and keeps rare words (unseen in training) where pre-training put them.
    freeze_embeddings: bool = True
    # Validation every this many steps on a held-out slice (by a hash of the text, so it is
    # the same slice on every run) of the pool; the best step is kept. 0 = off.
    validate_every: int = 0
    holdout_share: float = 0.05
    seed: int = 0
    notes: dict = field(default_factory=dict)


@dataclass
class TrainingData:
    """Everything a step may draw from; vectors are the teacher's, L2-normalised."""

    texts: list[str]  # phase-2 texts
    text_targets: np.ndarray  # [n, d] teacher vectors of ``texts``
    pair_queries: list[str] = field(default_factory=list)  # phase-3 queries (one per pair)
    pair_query_targets: np.ndarray | None = None  # teacher vectors of the pair queries
    pair_positive: list[int] = field(default_factory=list)  # row in ``doc_vectors``
    pair_negatives: list[list[int]] = field(default_factory=list)  # rows in ``doc_vectors``
    doc_vectors: np.ndarray | None = None  # frozen teacher keyword/product vectors
    text_candidates: np.ndarray | None = None  # [n, C] doc rows for ranking KL per text


def _tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def train(config: TrainConfig, data: TrainingData, initial_projection=None) -> Path:
    from retrieval.onnx_encoder import load_tokenizer

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    spec = get_spec(config.student)
    tokenizer = load_tokenizer(tokenizer_path(tokenizer_name(spec)))

    tokens = np.load(config.table_tokens) if config.table_tokens else None
    model = make_student(spec, initial_projection, config.teacher_folder, tokens)
    state = None
    if (out / "state.pt").is_file():
        saved_spec, _ = read_spec(out)
        if saved_spec != spec:
            raise ValueError(f"{out} holds a {saved_spec.name} checkpoint, not {spec.name}")
        model.load_state_dict(torch.load(out / "model.pt", map_location="cpu"))
        state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
        print(f"[distill] resuming {out} at step {state['step']}")
    elif config.init:
        model.load_state_dict(torch.load(Path(config.init) / "model.pt", map_location="cpu"))
        print(f"[distill] starting from {config.init}")
    model.train()
    if config.freeze_embeddings and hasattr(model, "transformer"):
        model.transformer.embeddings.word_embeddings.weight.requires_grad_(False)
    # A static student's token table gets sparse gradients (a batch touches a few thousand of
    # its 30k rows): SparseAdam updates only those rows, AdamW the rest; a dense update of the
    # whole 23M-value table every step would cost most of the step.
    sparse = list(model.sparse_parameters()) if hasattr(model, "sparse_parameters") else []
    trainable = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in sparse)]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.01)
    warmup = int(config.max_steps * config.warmup_share)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config.max_steps, warmup))
    extra = []
    if sparse:
        sparse_optimizer = torch.optim.SparseAdam(sparse, lr=config.lr)
        extra.append((sparse_optimizer, torch.optim.lr_scheduler.LambdaLR(
            sparse_optimizer, lambda s: _schedule(s, config.max_steps, warmup))))
    step = 0
    history: list[dict] = []
    elapsed_before = 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for (opt, sched), saved in zip(extra, state.get("extra", [])):
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        step, history, elapsed_before = state["step"], state["history"], state["elapsed_s"]

    contrastive = config.contrastive_weight > 0
    pool_texts = data.pair_queries if contrastive else data.texts
    if not pool_texts:
        raise ValueError("no training examples for this objective")
    train_rows, held_rows = list(range(len(pool_texts))), []
    if config.validate_every:
        held = {i for i, t in enumerate(pool_texts) if _held_out(t, config.holdout_share)}
        train_rows, held_rows = [i for i in train_rows if i not in held], sorted(held)
    pool = len(train_rows)
    if pool == 0:
        raise ValueError("no training examples for this objective")
    rng = random.Random(config.seed + step)
    doc_vectors = torch.from_numpy(data.doc_vectors) if data.doc_vectors is not None else None

    best = state.get("best") if state is not None else None
    cut_short = None

    def validate() -> float:
        score = _validation_score(model, tokenizer, data, held_rows, contrastive)
        model.train()
        return score

    started = time.perf_counter()
    bar = tqdm(total=config.max_steps, initial=step, desc=f"distill {spec.name}", unit="step", mininterval=5)
    running = None

    def checkpoint():
        info = {"config": asdict(config), "step": step, "history": history[-50:], "cut_short": cut_short}
        if best is not None:
            info["best_step"], info["best_validation"] = best["step"], best["score"]
        save_checkpoint(out, model, spec, info, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "history": history, "elapsed_s": elapsed_before + time.perf_counter() - started, "best": best,
            "extra": [{"optimizer": opt.state_dict(), "scheduler": sched.state_dict()} for opt, sched in extra],
        })

    while step < config.max_steps:
        if (elapsed_before + time.perf_counter() - started) / 60 > config.minutes:
            cut_short = f"the {config.minutes:g}-minute guard stopped it at step {step} of {config.max_steps}"
            print(f"[distill] {cut_short}")
            break
        rows = [train_rows[i] for i in rng.sample(range(pool), min(config.batch_size, pool))]
        losses = {}
        if contrastive:
            texts = [data.pair_queries[i] for i in rows]
            targets = torch.from_numpy(data.pair_query_targets[rows])
        else:
            texts = [data.texts[i] for i in rows]
            targets = torch.from_numpy(data.text_targets[rows])
        ids, mask = _tokenize(tokenizer, texts)
        vectors = model(ids, mask)
        loss = torch.zeros(())
        if config.l2_weight:
            losses["l2"] = l2_loss(vectors, targets)
            loss = loss + config.l2_weight * losses["l2"]
        if contrastive:
            positives = doc_vectors[torch.tensor([data.pair_positive[i] for i in rows])]
            negatives = None
            if config.hard_negatives:
                negatives = doc_vectors[torch.tensor([_pad(data.pair_negatives[i], config.hard_negatives, rng) for i in rows])]
            losses["nce"] = info_nce(vectors, positives, negatives, config.temperature,
                                     positive_ids=[data.pair_positive[i] for i in rows])
            loss = loss + config.contrastive_weight * losses["nce"]
            if config.kl_weight:
                # Ranking distillation on the same candidates: the batch's positives plus
                # each query's hard negatives, scored by the teacher's query vectors.
                candidates = positives.unsqueeze(0).expand(len(rows), -1, -1)
                if negatives is not None:
                    candidates = torch.cat([candidates, negatives], dim=1)
                losses["kl"] = ranking_kl(vectors, targets, candidates, config.kl_temperature)
                loss = loss + config.kl_weight * losses["kl"]
        if config.kl_weight and data.text_candidates is not None and not contrastive:
            candidates = doc_vectors[torch.from_numpy(data.text_candidates[rows, : config.kl_candidates])]
            losses["kl"] = ranking_kl(vectors, targets, candidates, config.kl_temperature)
            loss = loss + config.kl_weight * losses["kl"]
        optimizer_step(loss, optimizer, scheduler, trainable, extra)
        step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        running = values if running is None else {k: 0.98 * running.get(k, v) + 0.02 * v for k, v in values.items()}
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
            history.append({"step": step, **{k: round(v, 5) for k, v in running.items()}})
        if config.validate_every and (step % config.validate_every == 0 or step == config.max_steps):
            score = validate()
            history.append({"step": step, "validation": round(score, 5)})
            if best is None or score > best["score"]:
                best = {"step": step, "score": score, "model": _cpu_copy(model.state_dict())}
        if step % config.checkpoint_every == 0:
            checkpoint()
    bar.close()
    if best is not None and best["step"] != step:
        print(f"[distill] keeping step {best['step']} (validation {best['score']:.4f}), not the last step {step}")
        model.load_state_dict(best["model"])
    model.eval()
    checkpoint()
    return out


def _held_out(text: str, share: float) -> bool:
    digest = hashlib.sha256(f"holdout\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def _validation_score(model, tokenizer, data: TrainingData, rows: list[int], contrastive: bool) -> float:
    """Held-out score, higher is better: phase 2 the mean cosine to the teacher's vectors;
    phase 3 the MRR@10 of each held-out pair's positive among all frozen keyword vectors."""
    if not rows:
        return 0.0
    model.eval()
    texts = [(data.pair_queries if contrastive else data.texts)[i] for i in rows]
    vectors = torch.cat([model(*_tokenize(tokenizer, texts[i:i + 256])) for i in range(0, len(texts), 256)])
    if not contrastive:
        return float((vectors * torch.from_numpy(data.text_targets[rows])).sum(dim=1).mean())
    scores = vectors @ torch.from_numpy(data.doc_vectors).T
    positive = torch.tensor([data.pair_positive[i] for i in rows])
    rank = (scores > scores.gather(1, positive[:, None])).sum(dim=1)
    return float(torch.where(rank < 10, 1.0 / (rank + 1).float(), torch.zeros(())).mean())


def optimizer_step(loss: torch.Tensor, optimizer, scheduler, trainable, extra=()) -> None:
    """One update: dense gradients clipped to norm 1 (a bad batch cannot throw the model far);
    ``extra`` (optimizer, scheduler) pairs step too (the sparse table of a static student)."""
    optimizer.zero_grad(set_to_none=True)
    for opt, _ in extra:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    for opt, sched in extra:
        opt.step()
        sched.step()


def _pad(rows: list[int], n: int, rng: random.Random) -> list[int]:
    """Exactly ``n`` negative rows: sampled when there are more, repeated when fewer."""
    if len(rows) >= n:
        return rng.sample(rows, n)
    return (rows * math.ceil(n / max(1, len(rows))))[:n] if rows else [0] * n
