"""Score every model the same way, in one run, and write eval.json + eval.md."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence


from artifact.manifest import verify
from models.distill.checkpoint import load_student_checkpoint, read_spec
from models.distill.students import tokenizer_name
from models.distill.teacher_vectors import TeacherVectors
from models.embedding_cache import EmbeddingCache
from models.eval.judged import agreement, judged_eval_set, markdown_table, web_dev_queries, with_ratios


def raw_minilm_encoder(threads: int = 2):
    """all-MiniLM-L6-v2 in its own 384-d space (what a user gets with no distillation)."""
    import tempfile

    from models.embedding_cache import cached_encode, model_key
    from models.encoders import load_student_base, tokenizer_path
    from models.export import export_onnx
    from models.model_files import student_base_dir
    from retrieval.onnx_encoder import OnnxEncoder

    tmp = Path(tempfile.mkdtemp())
    export_onnx(load_student_base(), tmp / "base.onnx", tokenizer_path("student"))
    encoder = OnnxEncoder(tmp / "base.onnx", tokenizer_path("student"), 128, threads)
    cache = EmbeddingCache(model_key("minilm-l6", student_base_dir(), 128), encoder.dim)
    return lambda texts: cached_encode(encoder, cache, list(texts), "raw MiniLM")


def onnx_encoder(artifact: Path, precision: str, threads: int = 2):
    from artifact.manifest import encoder_model
    from retrieval.onnx_encoder import OnnxEncoder

    enc = verify(artifact, checksums=False)["encoders"]["student"]
    model = encoder_model(enc, precision)
    encoder = OnnxEncoder(artifact / model, artifact / enc["tokenizer"], enc["max_length"], threads)
    return lambda texts: encoder.encode_many(list(texts))


def evaluate_all(
    checkpoints: Sequence[Path],
    artifact: Path | None,
    out: Path,
    limit: int | None = None,
    threads: int = 2,
    web_queries: int = 1000,
    onnx_dirs: Sequence[Path] = (),
    teacher_folder: Path | None = None,
) -> dict:
    """``teacher_folder``: a phase-1 fine-tuned teacher as the reference (its vectors index
    the titles); the packaged teacher is then scored too, in its own space."""
    from models.distill.pipeline import torch_encoder

    teacher = TeacherVectors(threads, folder=teacher_folder)
    judged = judged_eval_set(lambda texts: teacher(texts, "product titles (teacher)"), "dev", limit)
    web = web_dev_queries(web_queries)
    web_teacher = teacher(web, "web dev queries (teacher)")
    keywords = judged.product_vectors

    encoders = {"teacher": lambda texts: teacher(list(texts), "dev queries (teacher)")}
    rows: dict[str, dict] = {}
    rows["teacher"] = judged.score(encoders["teacher"])

    # The raw MiniLM ranks in its own space: it needs its own product vectors.
    raw = raw_minilm_encoder(threads)
    from models.eval.judged import JudgedEval

    raw_set = JudgedEval(judged.queries, judged.judgments, judged.product_ids, raw(_product_texts()))
    rows["minilm_raw_own_space"] = raw_set.score(raw)
    if teacher_folder is not None:
        packaged = TeacherVectors(threads)
        own = JudgedEval(judged.queries, judged.judgments, judged.product_ids,
                         packaged(_product_texts(), "product titles (packaged teacher)"))
        rows["teacher_packaged_own_space"] = own.score(lambda texts: packaged(list(texts), "dev queries (packaged teacher)"))

    for folder in checkpoints:
        spec, info = read_spec(folder)
        model = load_student_checkpoint(folder)
        encode = torch_encoder(model, tokenizer_name(spec))
        name = f"{spec.name}/{Path(folder).name}"
        rows[name] = judged.score(encode)
        rows[name].update(agreement(encode(web), web_teacher, keywords))
    for folder in onnx_dirs:  # `hlm export-student` output: the precisions as served
        from retrieval.onnx_encoder import OnnxEncoder

        for precision, model in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
            if not (Path(folder) / model).is_file():  # a static student is exported fp32 only
                continue
            encoder = OnnxEncoder(Path(folder) / model, Path(folder) / "tokenizer.json", 128, threads)
            name = f"{Path(folder).name}_onnx_{precision}"
            rows[name] = judged.score(lambda texts, e=encoder: e.encode_many(list(texts)))
            rows[name].update(agreement(encoder.encode_many(web), web_teacher, keywords))
    if artifact is not None:
        student = verify(Path(artifact), checksums=False)["encoders"]["student"]
        for precision in ("fp32", "int8") if student.get("onnx_int8") else ("fp32",):
            encode = onnx_encoder(Path(artifact), precision, threads)
            name = f"artifact_student_{precision}"
            rows[name] = judged.score(encode)
            rows[name].update(agreement(encode(web), web_teacher, keywords))

    rows = with_ratios(rows)
    report = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "dev_queries": len(judged.queries),
        "products": len(judged.product_ids),
        "relevant_threshold": 2.33,
        "teacher": str(teacher_folder) if teacher_folder else "packaged all-mpnet-base-v2",
        "web_dev_queries": len(web),
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "eval.md").write_text(table + "\n")
    print(table)
    return report


def _product_texts() -> list[str]:
    from models import data as data_mod

    return data_mod.load_sample("products").texts
