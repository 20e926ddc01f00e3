"""``hlm build``: sample data -> a verified, servable artifact folder.

Steps, each timed and each resumable through the embedding cache (a killed build loses
at most one uncommitted chunk of encoding; the artifact folder itself appears only when
complete, see ``manifest.staged_folder``):

1. inputs    the keyword corpus and the query sets (models/inputs.py); split queries by hash
   phase1    (profiles with phase "1") fine-tune the teacher on judged train pairs and
             keep it only if its dev nDCG@10 beats the packaged teacher's
2. teacher   export the teacher to ONNX; encode keywords and queries (cached)
3. index     hnswlib graph over the keyword vectors + the keyword store
4. student   the profile's student trained in the build (phases 2/3, models/distill), the
             one ``student_checkpoint`` names, or MiniLM-L6 + a closed-form 384->768 fit
5. export    student fp32 ONNX (+ dynamic int8 for transformers), tokenizers, parity
6. eval      student vs teacher on held-out queries; index recall against exact search
7. gate      judged dev nDCG@10 of the student against the teacher's (models/eval/gate.py)
8. manifest  sha256 of every file, servable flag from the gate; rename into place
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models import data as data_mod
from models.embedding_cache import EmbeddingCache, cached_encode, model_key
from artifact.manifest import staged_folder, verify, write_manifest
from models.model_files import STUDENT_BASE_NAME, TEACHER_NAME, student_base_dir
from models.inputs import Inputs, extra_training_texts, select_inputs
from models.profiles import Profile

log = logging.getLogger(__name__)


class Timer:
    def __init__(self):
        self.steps: dict[str, float] = {}

    def step(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.start = time.perf_counter()
                print(f"[build] {name} …", flush=True)

            def __exit__(self, *exc):
                timer.steps[name] = round(time.perf_counter() - self.start, 2)
                if exc[0] is None:
                    print(f"[build] {name} done in {timer.steps[name]:.1f} s", flush=True)

        return _Step()


def build(
    profile: Profile,
    out_dir: Path,
    data_directory: Path | None = None,
    student_checkpoint: Path | None = None,
    threads: int = 2,
    gate_share: float = 0.98,
    allow_below_gate: bool = False,
) -> dict:
    """Build an artifact for ``profile`` into ``out_dir`` and return its manifest."""
    import torch

    from models import export as export_mod
    from models.encoders import load_teacher, tokenizer_path
    from models.distill.teacher_vectors import teacher_key
    from retrieval.exact import ef_for_recall
    from retrieval.hnsw import build_hnsw, graph_recall
    from retrieval.lexical import build_lexical
    from retrieval.onnx_encoder import OnnxEncoder
    from artifact.store import write_store

    torch.set_num_threads(threads)
    timer = Timer()
    started = time.perf_counter()
    out_dir = Path(out_dir)

    with timer.step("inputs"):
        inputs = select_inputs(profile, data_directory)
        for line in inputs.reports:
            print(f"  {line}")
        print(
            f"  keywords {len(inputs.keyword_texts)}, fit queries {len(inputs.fit_queries)}, "
            f"held-out queries {len(inputs.heldout_queries)}"
        )

    teacher_folder, phase1 = None, None
    if "1" in profile.distill_phases:
        with timer.step("phase1"):
            teacher_folder, phase1 = _finetune_teacher_in_build(profile, threads)

    with staged_folder(out_dir) as stage:
        with timer.step("teacher"):
            teacher_torch = load_teacher(teacher_folder)
            teacher_onnx = stage / "teacher" / "model.onnx"
            export_mod.export_onnx(teacher_torch, teacher_onnx, tokenizer_path("teacher"))
            export_mod.copy_tokenizer(tokenizer_path("teacher"), stage / "teacher" / "tokenizer.json", profile.max_length)
            teacher = OnnxEncoder(teacher_onnx, stage / "teacher" / "tokenizer.json", profile.max_length, threads)
            teacher_cache = EmbeddingCache(teacher_key(profile.max_length, teacher_folder), teacher.dim)
            keyword_vectors = cached_encode(teacher, teacher_cache, inputs.keyword_texts, "keywords (teacher)")
            fit_targets = cached_encode(teacher, teacher_cache, inputs.fit_queries, "fit queries (teacher)")
            heldout_teacher = cached_encode(teacher, teacher_cache, inputs.heldout_queries, "held-out (teacher)")

        with timer.step("index"):
            (stage / "index").mkdir()
            write_store(stage / "index" / "keywords.tsv", inputs.keyword_ids, inputs.keyword_texts)
            lexical_fields = {"path": "index/bm25", **build_lexical(inputs.keyword_texts, stage / "index" / "bm25")}
            if profile.index == "compressed":
                index = None
                index_fields = _build_compressed(profile, keyword_vectors, stage, threads)
                index_fields["dim"] = int(keyword_vectors.shape[1])
            else:
                index = build_hnsw(keyword_vectors, stage / "index" / "keywords.hnsw", profile.hnsw_m,
                                   profile.hnsw_ef_construction, threads)
                index_fields = _hnsw_fields(profile)

        with timer.step("student"):
            if student_checkpoint is None and {"2", "3"} & set(profile.distill_phases):
                student_checkpoint = _distill_in_build(profile, inputs, keyword_vectors, teacher, threads, teacher_folder)
            student_torch, student_note, student_tok, quantizable = _make_student(
                profile, inputs, keyword_vectors, fit_targets, student_checkpoint, threads
            )

        with timer.step("export"):
            student_onnx = stage / "student" / "model.onnx"
            student_int8 = stage / "student" / "model.int8.onnx"
            export_mod.copy_tokenizer(tokenizer_path(student_tok), stage / "student" / "tokenizer.json", profile.max_length)
            export_mod.export_onnx(student_torch, student_onnx, tokenizer_path(student_tok))
            student = OnnxEncoder(student_onnx, stage / "student" / "tokenizer.json", profile.max_length, threads)
            student8 = None
            if quantizable:
                export_mod.quantize_int8(student_onnx, student_int8)
                student8 = OnnxEncoder(student_int8, stage / "student" / "tokenizer.json", profile.max_length, threads)
            served = student8 or student  # the gate scores the precision the service serves by default
            probe = inputs.heldout_queries[:64]
            parity = {
                "teacher_onnx_vs_torch": export_mod.cosine_parity(
                    teacher.encode_many(probe), export_mod.torch_encode(teacher_torch, tokenizer_path("teacher"), probe)
                ),
                "student_onnx_vs_torch": export_mod.cosine_parity(
                    student.encode_many(probe), export_mod.torch_encode(student_torch, tokenizer_path(student_tok), probe)
                ),
            }
            if student8 is not None:
                parity["student_int8_vs_fp32"] = export_mod.cosine_parity(student8.encode_many(probe), student.encode_many(probe))
            for name, p in parity.items():
                print(f"  parity {name}: mean cosine {p['mean_cosine']:.5f}, min {p['min_cosine']:.5f}")
            del teacher_torch

        with timer.step("eval"):
            summary = _agreement(
                inputs.heldout_queries, heldout_teacher, keyword_vectors,
                {"student_fp32": student, **({"student_int8": student8} if student8 is not None else {})},
            )
            if index is not None:
                summary["hnsw_recall_at_10"] = round(graph_recall(index, keyword_vectors, heldout_teacher, 10, profile.hnsw_ef), 4)
                summary["hnsw_ef_for_recall_0_99"] = ef_for_recall(
                    lambda ef: graph_recall(index, keyword_vectors, heldout_teacher, 10, ef))
                summary["index_recall_at_10"] = summary["hnsw_recall_at_10"]
            else:
                served_index = _open_compressed(stage, index_fields)
                summary["index_recall_at_10"] = round(index_recall(served_index, inputs.keyword_ids, keyword_vectors,
                                                                   heldout_teacher, 10, profile.index_candidates), 4)
                summary["index_ef_for_recall_0_99"] = ef_for_recall(
                    lambda ef: index_recall(served_index, inputs.keyword_ids, keyword_vectors, heldout_teacher, 10, ef))
            summary["parity"] = parity
            if phase1 is not None:
                summary["phase1"] = phase1
            (stage / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
            for name in ("student_fp32", "student_int8"):
                if name not in summary:
                    continue
                s = summary[name]
                print(f"  {name}: overlap@10 with teacher {s['overlap_at_10']:.3f}, mean cosine {s['mean_cosine']:.3f}")
            print(f"  {index_fields['library']} recall@10 at ef={index_fields['ef']}: {summary['index_recall_at_10']}")

        with timer.step("gate"):
            gate_index = _open_compressed(stage, index_fields) if index is None else None
            gate = _gate(profile, inputs, teacher, teacher_cache, served, gate_share, allow_below_gate, gate_index)
            summary["gate"] = gate.to_dict()
            (stage / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(f"  {gate.message}")

        with timer.step("manifest"):
            from artifact.judged import write_judged
            from models.eval.judged import dev_labels

            # The dev split's judged queries over the indexed products: the playground's labels.
            judgments = write_judged(stage, dev_labels(inputs.keyword_ids))
            teacher_note = TEACHER_NAME if teacher_folder is None else (
                f"{TEACHER_NAME} fine-tuned on judged train pairs (phase 1, step {phase1['step']})")
            manifest = _manifest(profile, inputs, teacher, student, student_note, summary, student_tok, teacher_note,
                                 int8=student8 is not None, index_fields=index_fields)
            manifest["servable"] = gate.servable
            manifest["gate"] = gate.to_dict()
            manifest["lexical"] = lexical_fields  # BM25 over the keywords, for "fusion": "rrf" (retrieval/lexical.py)
            manifest["judgments"] = judgments
            manifest = write_manifest(stage, manifest)
            verify(stage)

    total = round(time.perf_counter() - started, 1)
    manifest = verify(out_dir, checksums=False)
    _print_summary(out_dir, manifest, timer.steps, total, inputs)
    timings_path = out_dir.parent / f"{out_dir.name}.build-timings.json"
    timings_path.write_text(json.dumps({"steps_s": timer.steps, "total_s": total, "machine": platform.node()}, indent=2))
    return manifest


def _hnsw_fields(profile: Profile) -> dict:
    return {"path": "index/keywords.hnsw", "library": "hnswlib", "M": profile.hnsw_m,
            "ef_construction": profile.hnsw_ef_construction, "ef": profile.hnsw_ef}


def _build_compressed(profile: Profile, keyword_vectors: np.ndarray, stage: Path, threads: int) -> dict:
    """The compressed index (retrieval/compressed.py) and its manifest fields."""
    from retrieval.compressed import build_compressed, default_nprobe

    made = build_compressed(keyword_vectors, stage / "index", profile.index_factory, threads=threads,
                            precision=profile.index_precision)
    nprobe = profile.index_nprobe or default_nprobe(made["lists"], len(keyword_vectors))
    print(f"  compressed index {made['factory']}: {made['code_bytes']} B of code a keyword, {made['lists']} lists, "
          f"{nprobe} scanned a query, {made['precision']} vectors for the re-rank")
    return {"path": "index/keywords.faiss", "library": "faiss", **made, "nprobe": nprobe, "ef": profile.index_candidates}


def _open_compressed(stage: Path, fields: dict):
    from retrieval.compressed import CompressedIndex

    return CompressedIndex(stage / fields["path"], stage / fields["vectors"], stage / "index" / "keywords.tsv",
                           int(fields.get("dim") or 768), int(fields["ef"]), int(fields["nprobe"]))


def index_recall(index, keyword_ids: list[str], keyword_vectors: np.ndarray, queries: np.ndarray, k: int, ef: int) -> float:
    """recall@k of a served index (``VectorIndex.search``) at ``ef`` against exact search."""
    from retrieval.base import SearchParams
    from retrieval.exact import exact_top_k, recall_at_k

    truth = [[keyword_ids[i] for i in row] for row in exact_top_k(keyword_vectors, queries, k).tolist()]
    found = [[hit.id for hit in row] for row in index.search(queries, SearchParams(k, max(ef, k)))]
    return recall_at_k(found, truth)


def _finetune_teacher_in_build(profile, threads) -> tuple[Path | None, dict]:
    """Phase 1; the fine-tuned teacher's folder if it beat the packaged one on dev, else None.

    Its checkpoints live in the cache (keyed by profile and step budget), so a killed
    build resumes the fine-tune, and a finished one is not run again.
    """
    from models.distill.phase1 import Phase1Config, run_phase1
    from models.model_files import CACHE_DIR

    negatives = profile.phase1_hard_negatives
    out = CACHE_DIR / "distill" / (f"{profile.name}-teacher-phase1-s{profile.phase1_steps}"
                                   + (f"-hn{negatives}" if negatives else ""))
    config = Phase1Config(out=str(out), minutes=profile.phase1_minutes, max_steps=profile.phase1_steps, threads=threads,
                          hard_negatives=negatives)
    return run_phase1(config, profile.phase1_judge_titles, profile.gate_queries)


NOT_IN_STUDENT_KEY = ("index", "hnsw_", "phase1_")


def _distill_in_build(profile, inputs, keyword_vectors, teacher, threads, teacher_folder=None) -> Path:
    """Run the profile's training phases on its own data; returns the final checkpoint.

    The checkpoints live in the cache, keyed by profile and keyword set, so a killed
    build resumes its training where it stopped.
    """
    import hashlib

    from models.distill.pipeline import run_phases
    from models.distill.prepare import build_training_data
    from models.distill.teacher_vectors import TeacherVectors, teacher_key
    from models.model_files import CACHE_DIR

    rows = [i for i, k in enumerate(inputs.keyword_ids) if k.startswith("hd:")]
    products = ([inputs.keyword_ids[i][3:] for i in rows], [inputs.keyword_texts[i] for i in rows], keyword_vectors[rows])
    others = [t for k, t in zip(inputs.keyword_ids, inputs.keyword_texts) if not k.startswith("hd:")]
    data = build_training_data(
        TeacherVectors(threads, encoder=teacher, folder=teacher_folder), products=products, web_queries=0, topics_limit=0,
        kl_candidates=0, extra_texts=inputs.fit_queries + others + extra_training_texts(profile),
    )
    print(f"  training data: {len(data.texts)} phase-2 texts, {len(data.pair_queries)} judged train pairs")
    teacher_id = teacher_key(profile.max_length, teacher_folder) if teacher_folder else "packaged"
    # Keyed by the keyword texts themselves too: a change of the text clean-up (HTML entities
    # decoded since #26) must not resume a training on the old texts.
    texts = hashlib.sha256("\n".join(inputs.keyword_texts).encode()).hexdigest()
    # Fields that do not change the training stay out of the key, so adding or changing one
    # does not throw away hours of checkpoints: the index the artifact holds (an hnswlib and a
    # compressed build of one profile share their student), and phase 1's settings (the teacher
    # they make is in the key as teacher_id, the fine-tuned teacher's own cache key).
    recipe = {k: v for k, v in asdict(profile).items() if not k.startswith(NOT_IN_STUDENT_KEY)}
    key = hashlib.sha256(json.dumps([recipe, inputs.keyword_ids[:50], len(inputs.keyword_ids), teacher_id,
                                     texts]).encode()).hexdigest()[:12]
    out_root = CACHE_DIR / "distill" / f"{profile.name}-{profile.student}-{key}"
    print(f"  training checkpoints: {out_root}")
    table_tokens = None
    if profile.static_table == "texts":
        # Every text the student is trained, validated, exported or gated on (the held-out and
        # gate queries' tokens get the teacher's own rows, as the whole table gives them).
        from models.distill.static import text_tokens

        table_tokens = out_root / "table-tokens.npy"
        out_root.mkdir(parents=True, exist_ok=True)
        np.save(table_tokens, text_tokens(data.texts + data.pair_queries + inputs.heldout_queries
                                          + _gate_queries(profile)[0]))
        print(f"  static table: the {len(np.load(table_tokens))} tokens of the build's texts (the others weigh nothing)")
    (m2, m3), (s2, s3) = profile.distill_minutes, profile.distill_steps
    done = run_phases(
        profile.student, data, out_root, profile.distill_phases,
        phase2={"minutes": m2, "max_steps": s2}, phase3={"minutes": m3, "max_steps": s3, "kl_weight": profile.distill_kl,
                                                    "l2_weight": profile.distill_l2}, threads=threads,
        teacher_folder=teacher_folder, table_tokens=table_tokens,
    )
    return done.get("phase3") or done["phase2"]


def _make_student(profile, inputs, keyword_vectors, fit_targets, checkpoint, threads):
    """The student slot: a trained checkpoint if given, else the closed-form linear fit.

    Returns (model, description, which packaged tokenizer it uses).
    """
    from models.encoders import load_student_base, tokenizer_path
    from models.export import export_onnx
    from models.student_linear import attach_projection, fit_projection
    from retrieval.onnx_encoder import OnnxEncoder

    if checkpoint is not None:
        from models.distill.checkpoint import load_student_checkpoint, read_spec
        from models.distill.students import tokenizer_name

        from models.distill.students import is_quantizable

        spec, info = read_spec(checkpoint)
        step = info.get("best_step") or info.get("step")
        # Which phase made it (run_phases notes it in the checkpoint's config), so the manifest
        # says what ships: phase 3's student, not phase 2's.
        phase = info.get("phase") or ((info.get("config") or {}).get("notes") or {}).get("phase") or "distilled"
        note = f"{spec.name} trained by hlm distill ({phase}, step {step})"
        if info.get("cut_short"):
            note += f"; {info['cut_short']}"
        if (info.get("config") or {}).get("table_tokens"):
            import numpy

            held = len(numpy.load(info["config"]["table_tokens"]))
            note += f"; its table holds the {held} tokens of the build's texts, other tokens weigh nothing"
        return load_student_checkpoint(checkpoint), note, tokenizer_name(spec), is_quantizable(spec)

    base = load_student_base()
    # The base model's own vectors of the fit texts, via a temporary ONNX export (bulk
    # encoding is several times faster in ONNX Runtime than in eager PyTorch).
    base_key = model_key("minilm-l6", student_base_dir(), profile.max_length)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base_onnx = Path(tmp) / "base.onnx"
        export_onnx(base, base_onnx, tokenizer_path("student"))
        base_encoder = OnnxEncoder(base_onnx, tokenizer_path("student"), profile.max_length, threads)
        cache = EmbeddingCache(base_key, base_encoder.dim)
        fit_texts = inputs.fit_queries + inputs.keyword_texts
        x = cached_encode(base_encoder, cache, fit_texts, "fit texts (student base)")
    y = np.concatenate([fit_targets, keyword_vectors])
    weight, bias = fit_projection(x, y, profile.ridge)
    note = f"{STUDENT_BASE_NAME} + linear 384->768 (closed-form ridge fit on {len(x)} texts)"
    return attach_projection(base, weight, bias), note, "student", True


def _gate_queries(profile):
    """The gate's judged dev queries, their judgments, and every product's title by id."""
    from models.eval.judged import judged_queries

    products = data_mod.load_sample("products")
    queries, judgments = judged_queries(products.ids, "dev", profile.gate_queries)
    return queries, judgments, dict(zip(products.ids, products.texts))


def _gate(profile, inputs, teacher, teacher_cache, student, share, allow_below, served_index=None):
    """Score teacher and (int8, the served precision) student on judged dev queries; with
    ``served_index`` (a compressed index) both are scored through it, as the service answers
    them (their product hits, filter source=hd, k 10 at the index's own ef) instead of by exact
    search over the gate's titles: what compression costs each encoder is in its figure."""
    from models.eval.judged import JudgedEval
    from models.eval.gate import check_gate

    queries, judgments, title_of = _gate_queries(profile)
    pool = [k[3:] for k in inputs.keyword_ids if k.startswith("hd:")]
    pool = list(dict.fromkeys(pool + [d for graded in judgments for d in graded]))
    vectors = cached_encode(teacher, teacher_cache, [title_of[d] for d in pool], "gate products (teacher)")
    scored = JudgedEval(queries, judgments, pool, vectors)
    ranked = None
    if served_index is not None:
        from retrieval.base import SearchParams

        def ranked(vectors):  # the product hits the service answers (k 10 at the index's own ef)
            hits = served_index.search(vectors, SearchParams(10, served_index.default_ef, {"source": "hd"}))
            return [[hit.id.partition(":")[2] for hit in row] for row in hits]

    teacher_row = scored.score(lambda texts: cached_encode(teacher, teacher_cache, list(texts), "gate queries (teacher)"),
                               ranked=ranked)
    student_row = scored.score(lambda texts: student.encode_many(list(texts)), ranked=ranked)
    print(f"  gate set: {len(queries)} judged dev queries over {len(pool)} product titles")
    exact = None
    if served_index is not None:
        exact = {"teacher": scored.score(lambda texts: cached_encode(teacher, teacher_cache, list(texts), "gate (teacher)")),
                 "student": scored.score(lambda texts: student.encode_many(list(texts)))}
        print(f"  exact search: teacher nDCG@10 {exact['teacher']['ndcg_at_10']:.4f}, "
              f"student {exact['student']['ndcg_at_10']:.4f}; through the compressed index (the served path):")
    print(f"  teacher nDCG@10 {teacher_row['ndcg_at_10']:.4f}, student nDCG@10 {student_row['ndcg_at_10']:.4f}")
    gate = check_gate(student_row["ndcg_at_10"], teacher_row["ndcg_at_10"], share, allow_below)
    if exact is not None:
        gate.path = "served (compressed index)"
        gate.exact = {name: round(row["ndcg_at_10"], 4) for name, row in exact.items()}
    return gate


def _agreement(queries, teacher_vectors, keyword_vectors, students) -> dict:
    from retrieval.exact import exact_top_k
    from models.eval.metrics import overlap_at_k

    k = min(10, len(keyword_vectors))
    teacher_top = exact_top_k(keyword_vectors, teacher_vectors, k)
    out = {"heldout_queries": len(queries), "k": k}
    for name, encoder in students.items():
        vectors = encoder.encode_many(queries)
        top = exact_top_k(keyword_vectors, vectors, k)
        overlap = np.mean([overlap_at_k(a, b, k) for a, b in zip(top.tolist(), teacher_top.tolist())])
        cosine = float((vectors * teacher_vectors).sum(axis=1).mean())
        out[name] = {"overlap_at_10": round(float(overlap), 4), "mean_cosine": round(cosine, 4)}
    # Chance level: the overlap two random top-k lists would have.
    out["chance_overlap_at_10"] = round(k / len(keyword_vectors), 6)
    return out


def _manifest(profile, inputs, teacher, student, student_note, summary, student_tok="student", teacher_note=TEACHER_NAME,
              int8: bool = True, index_fields: dict | None = None) -> dict:
    encoder_common = {"pooling": "mean", "normalized": True, "max_length": profile.max_length,
                      "inputs": ["input_ids", "attention_mask"], "output": "embedding"}
    return {
        "name": profile.name,
        "profile": asdict(profile),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoders": {
            "teacher": {
                **encoder_common,
                "onnx": "teacher/model.onnx",
                "onnx_int8": None,
                "tokenizer": "teacher/tokenizer.json",
                "dim": teacher.dim,
                "model": teacher_note,
            },
            "student": {
                **encoder_common,
                "onnx": "student/model.onnx",
                "onnx_int8": "student/model.int8.onnx" if int8 else None,
                "default_precision": "int8" if int8 else "fp32",
                # Dynamic int8 scales activations over the whole batch, so its answers depend on
                # batch-mates; fp32 graphs do not. The service batches only what is invariant.
                "batch_invariant": {"fp32": True, "int8": False},
                "tokenizer": "student/tokenizer.json",
                "dim": student.dim,
                "model": student_note,
                "base_model": TEACHER_NAME if student_tok == "teacher" else STUDENT_BASE_NAME,
            },
        },
        "index": {
            **(index_fields or _hnsw_fields(profile)),
            "store": "index/keywords.tsv",
            "space": "ip",
            "dim": teacher.dim,
            "count": len(inputs.keyword_ids),
        },
        "corpus": {"rows": len(inputs.keyword_ids), "sources": inputs.sources},
        "eval": summary,
        "servable": True,
    }


def _print_summary(out_dir: Path, manifest: dict, steps: dict, total: float, inputs: Inputs) -> None:
    size = sum(f["bytes"] for f in manifest["files"].values())
    print("\n[build] summary")
    print(f"  artifact   {out_dir} ({size / 1e6:.1f} MB, sha256 {manifest['artifact_sha256'][:12]}…)")
    idx = manifest["index"]
    shape = (f"M={idx['M']} ef_construction={idx['ef_construction']}" if idx["library"] == "hnswlib"
             else f"{idx['factory']} nprobe={idx['nprobe']}")
    print(f"  keywords   {idx['count']} rows, {idx['dim']}-d, {idx['library']} {shape} ef={idx['ef']}")
    print(f"  queries    {len(inputs.fit_queries)} fit (train split), {len(inputs.heldout_queries)} held out (dev split)")
    for rel, info in sorted(manifest["files"].items()):
        print(f"  file       {rel:28s} {info['bytes'] / 1e6:8.1f} MB")
    print("  timings    " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items()) + f"; total {total:.1f}s")
    print(f"  teacher    {manifest['encoders']['teacher']['model']}")
    print(f"  student    {manifest['encoders']['student']['model']}")
    print(f"  gate       {manifest['gate']['message']}")
