"""`hlm`: one entry point, a subcommand per step (build, serve, eval, loadtest, ...).

Imports happen inside each command so the serving environment, which has no torch,
can run `hlm serve` and `hlm verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def build(
    profile: str = typer.Option("demo", help="demo (default: 12,000 keywords, the static student trained in the build; "
                                "~25 min on a fresh 2-core machine, ~12 with the cache warm), full (every keyword and "
                                "query of the sample data, phase 1 then the static student), small (tests: MiniLM with "
                                "a closed-form projection), tiny (tests: the static student on a slice)."),
    out: Optional[Path] = typer.Option(None, help="Artifact folder; default artifacts/<profile>."),
    data_dir: Optional[Path] = typer.Option(None, envvar="HLM_DATA_DIR", help="Sample data folder."),
    student_checkpoint: Optional[Path] = typer.Option(None, help="A trained student from `hlm distill` (default: the "
                                                      "profile's student, trained in the build)."),
    threads: int = typer.Option(2, help="CPU threads for encoding and index build."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing if a verified artifact is already there."),
    gate_share: float = typer.Option(0.98, help="Share of the teacher's dev nDCG@10 the student must keep to be servable."),
    allow_below_gate: bool = typer.Option(False, help="Mark the artifact servable even if the student fails the gate."),
    student: Optional[str] = typer.Option(None, help="Train this student instead of the profile's (static for demo "
                                          "and full; minilm-l6, minilm-l3, mpnet-l1 … mpnet-l4, static, static-head)."),
    index: Optional[str] = typer.Option(None, help="Keyword index: hnswlib (the default: a graph over the full "
                                        "vectors in RAM) or compressed (faiss IVF + 4-bit PQ codes in RAM, full "
                                        "vectors on disk for exact re-ranking; docs/SCALE.md)."),
    vector_precision: Optional[str] = typer.Option(None, help="Compressed index: the stored vectors' precision, "
                                                   "float32, float16 or auto (the default: float32 while its file fits "
                                                   "in half this machine's RAM, else float16)."),
) -> None:
    """Build a verified artifact: teacher index, student and teacher ONNX, manifest."""
    from models.data import DataError
    from artifact.manifest import ArtifactError, verify
    from models.profiles import get_profile

    out = out or Path("artifacts") / profile
    if if_missing:
        try:
            verify(out)
            typer.echo(f"{out} is already a verified artifact; nothing to build.")
            return
        except ArtifactError:
            pass
    from models.build import build as run_build

    try:
        if student is not None:
            from models.distill.students import get_spec

            get_spec(student)  # an unknown name stops here, before any work
        if index is not None and index not in ("hnswlib", "compressed"):
            raise ValueError(f"unknown index {index!r}; choose hnswlib or compressed")
        if vector_precision is not None:
            from retrieval.compressed import check_precision

            check_precision(vector_precision)  # an unknown name stops here, before any work
        run_build(get_profile(profile, student=student, index=index, index_precision=vector_precision), out, data_dir,
                  student_checkpoint, threads, gate_share, allow_below_gate)
    except (DataError, ArtifactError, ValueError) as exc:
        typer.echo(f"hlm build: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def distill(
    student: str = typer.Option("static", help="static (default: the product's student), static-head, minilm-l6, "
                                "minilm-l3, mpnet-l1 … mpnet-l4."),
    phases: str = typer.Option("2,3", help="Which phases to run, in order (1 = teacher fine-tune, 2 = L2 alignment, 3 = contrastive)."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint root; default runs/students/<student>."),
    minutes1: Optional[float] = typer.Option(None, help="Wall-clock guard of phase 1 (default: the full profile's, 45)."),
    steps1: Optional[int] = typer.Option(None, help="Step budget of phase 1 (default: the full profile's, 560)."),
    teacher: Optional[Path] = typer.Option(None, help="Distil from this phase-1 teacher folder instead of the packaged teacher."),
    minutes2: Optional[float] = typer.Option(None, help="Wall-clock guard of phase 2 (default: the full profile's for the "
                                             "student's family: static 60, transformer 45)."),
    minutes3: Optional[float] = typer.Option(None, help="Wall-clock guard of phase 3 (default: the full profile's: static 30, "
                                             "transformer 75)."),
    steps2: Optional[int] = typer.Option(None, help="Step budget (sets the learning-rate schedule) of phase 2 (default: "
                                         "the full profile's for the student's family: static 2,000, transformer 1,200)."),
    steps3: Optional[int] = typer.Option(None, help="Step budget of phase 3 (default: the full profile's: static 600, "
                                         "transformer 1,800)."),
    kl_weight: float = typer.Option(0.0, help="Phase 2: weight of the ranking-KL term."),
    l2_share: Optional[float] = typer.Option(None, help="Phase 3: weight of the L2 term kept beside InfoNCE (default: the "
                                             "full profile's, 1.0)."),
    kl3: Optional[float] = typer.Option(None, help="Phase 3: weight of ranking KL to the teacher's scores over the batch's "
                                        "candidates (default: the full profile's, 1.0)."),
    init: Optional[Path] = typer.Option(None, help="Start phase 3 from this checkpoint instead of phase 2's."),
    lr2: Optional[float] = typer.Option(None, help="Phase-2 learning rate (default: the family's, models/distill/recipes.py)."),
    lr3: Optional[float] = typer.Option(None, help="Phase-3 learning rate (default: the family's)."),
    products: Optional[int] = typer.Option(None, help="Use only the first N product titles (default all)."),
    threads: int = typer.Option(2, help="CPU threads for training and encoding."),
) -> None:
    """Train a student (phases 2 and 3) into the teacher's space, after phase 1 if asked; resumable.

    The step budgets, time guards and loss weights default to the full profile's recipe for the
    student's family (models/profiles.py); the training texts are all the sample data's train split."""
    from models.distill.pipeline import run_phases
    from models.distill.prepare import build_training_data
    from models.distill.students import get_spec
    from models.distill.teacher_vectors import TeacherVectors
    from models.profiles import get_profile

    try:
        get_spec(student)  # an unknown name stops here, before any work
    except ValueError as exc:
        typer.echo(f"hlm distill: {exc}", err=True)
        raise typer.Exit(2)
    recipe = get_profile("full", student=student)
    (m2, m3), (s2, s3) = recipe.distill_minutes, recipe.distill_steps
    out = out or Path("runs/students") / student
    if "1" in phases.split(","):
        from models.distill.phase1 import Phase1Config, run_phase1

        adopted, _ = run_phase1(Phase1Config(out=str(out / "phase1"), minutes=recipe.phase1_minutes if minutes1 is None
                                             else minutes1, max_steps=recipe.phase1_steps if steps1 is None else steps1, threads=threads))
        teacher = teacher or adopted
    data = build_training_data(TeacherVectors(threads, folder=teacher), products_limit=products,
                               kl_candidates=32 if kl_weight else 0)
    typer.echo(f"training data: {len(data.texts)} phase-2 texts, {len(data.pair_queries)} phase-3 pairs")
    done = run_phases(
        student, data, out, phases.split(","),
        phase2={"minutes": m2 if minutes2 is None else minutes2, "max_steps": s2 if steps2 is None else steps2, "kl_weight": kl_weight,
                **({"lr": lr2} if lr2 else {})},
        phase3={"minutes": m3 if minutes3 is None else minutes3, "max_steps": s3 if steps3 is None else steps3,
                "l2_weight": recipe.distill_l2 if l2_share is None else l2_share,
                "kl_weight": recipe.distill_kl if kl3 is None else kl3,
                **({"lr": lr3} if lr3 else {}), **({"init": str(init)} if init else {})},
        threads=threads, teacher_folder=teacher,
    )
    for phase, path in done.items():
        typer.echo(f"{phase}: {path}")


@app.command("eval")
def eval_cmd(
    checkpoints: list[Path] = typer.Argument(None, help="Student checkpoint folders from `hlm distill`."),
    artifact: Optional[Path] = typer.Option(None, help="Also score this artifact's ONNX student (fp32 and int8)."),
    out: Path = typer.Option(Path("runs/eval"), help="Folder for eval.json and eval.md."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N dev queries."),
    onnx_dir: list[Path] = typer.Option([], help="Also score an `hlm export-student` folder (fp32 and int8)."),
    teacher: Optional[Path] = typer.Option(None, help="A phase-1 fine-tuned teacher folder as the reference (default: the packaged teacher)."),
    threads: int = typer.Option(2),
) -> None:
    """Score teacher, raw MiniLM and students on the judged dev split (and web agreement)."""
    from models.eval.report import evaluate_all

    evaluate_all(checkpoints or [], artifact, out, limit, threads, onnx_dirs=onnx_dir, teacher_folder=teacher)


@app.command("export-student")
def export_student(
    checkpoint: Path = typer.Argument(..., help="A student checkpoint folder from `hlm distill`."),
    out: Path = typer.Option(..., help="Folder for model.onnx, model.int8.onnx and tokenizer.json."),
) -> None:
    """Export a trained student to ONNX (fp32 + int8) on its own, for benchmarks and studies."""
    from models import export as export_mod
    from models.distill.checkpoint import load_student_checkpoint, read_spec
    from models.distill.students import tokenizer_name
    from models.encoders import tokenizer_path

    spec, _ = read_spec(checkpoint)
    tok = tokenizer_path(tokenizer_name(spec))
    out.mkdir(parents=True, exist_ok=True)
    export_mod.copy_tokenizer(tok, out / "tokenizer.json", 128)
    export_mod.export_onnx(load_student_checkpoint(checkpoint), out / "model.onnx", tok)
    from models.distill.students import is_quantizable

    if is_quantizable(spec):  # a static student has no MatMul worth quantising
        export_mod.quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    typer.echo(f"exported {spec.name} to {out}")


@app.command(
    "loadtest",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def loadtest_cmd(ctx: typer.Context) -> None:
    """The load-test harness: run | sweep | compare | floor | promcheck (`hlm loadtest --help`)."""
    from loadtest.cli import main

    raise typer.Exit(main(list(ctx.args), prog="hlm loadtest") or 0)


@app.command(
    "bench-encoders",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench_encoders(ctx: typer.Context) -> None:
    """Encoder-alone latency and throughput, teacher vs student (`hlm bench-encoders --help`)."""
    from benchmarks import encoder_bench

    encoder_bench.main(list(ctx.args), prog="hlm bench-encoders")


@app.command("verify")
def verify_cmd(artifact: Path = typer.Argument(Path("artifacts/demo"))) -> None:
    """Check an artifact folder against its manifest (files, checksums, dimensions)."""
    from artifact.manifest import ArtifactError, verify

    try:
        manifest = verify(artifact)
    except ArtifactError as exc:
        typer.echo(f"hlm verify: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{artifact}: verified ({len(manifest['files'])} files, sha256 {manifest['artifact_sha256'][:12]}…)")


@app.command("query")
def query_cmd(
    text: str = typer.Argument(..., help="The query, e.g. \"cordless drill\"."),
    encoder: str = typer.Option("both", help="student, teacher or both (side by side)."),
    k: int = typer.Option(10, min=1, help="Keywords per encoder."),
    ef: Optional[int] = typer.Option(None, min=1, help="HNSW search breadth (default the artifact's)."),
    url: Optional[str] = typer.Option(None, help="A running service (default http://127.0.0.1:8000)."),
    artifact: Optional[Path] = typer.Option(None, help="Answer straight from this artifact folder, no service."),
    filter_json: Optional[str] = typer.Option(None, "--filter", help="Keyword attributes, JSON: '{\"source\": \"hd\"}'."),
) -> None:
    """One query's keywords from the student and the teacher, side by side, shared ones marked."""
    from hlm.query import QueryError, run

    try:
        code = run(text, encoder=encoder, k=k, url=url, artifact=artifact, ef=ef, filter_json=filter_json)
    except QueryError as exc:
        typer.echo(f"hlm query: {exc}", err=True)
        raise typer.Exit(2)
    if code:
        raise typer.Exit(code)


@app.command()
def serve(
    artifact: Optional[Path] = typer.Option(None, help="Artifact folder (default HLM_ARTIFACT_DIR or artifacts/demo)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on (default HLM_HOST or 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default HLM_PORT or 8000)."),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log", help="Log every request (default off, for speed)."),
    log_level: Optional[str] = typer.Option(None, help="debug, info, warning, error (default HLM_LOG_LEVEL or info)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes, one per core (default HLM_WORKERS or 1)."),
) -> None:
    """Serve the HTTP API (every other setting from HLM_* variables)."""
    from service.workers import run as run_server
    from service.settings import Settings, describe_invalid

    overrides = {"artifact_dir": artifact, "host": host, "port": port, "access_log": access_log, "log_level": log_level,
                 "workers": workers}
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValueError as exc:  # one sentence, without the values (a token is a secret)
        typer.echo(f"hlm serve: invalid settings: {describe_invalid(exc)}", err=True)
        raise typer.Exit(2)
    code = run_server(settings)
    if code:
        raise typer.Exit(code)


index_app = typer.Typer(no_args_is_help=True, help="The keyword index in a vector database (Milvus).")
app.add_typer(index_app, name="index")


INDEX_TYPE_HELP = ("Milvus' vector index: HNSW (the default, the artifact's M and efConstruction), HNSW_SQ (8-bit codes "
                   "in the graph), IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW_PQ, IVF_RABITQ, DISKANN. milvus-lite 3.2 builds HNSW, "
                   "HNSW_SQ, IVF_FLAT and IVF_SQ8; a type the engine does not build is refused with a sentence.")


@index_app.command("push")
def index_push(
    artifact: Path = typer.Argument(..., help="A verified artifact folder."),
    uri: str = typer.Option(..., envvar="HLM_MILVUS_URI", help="Milvus URI: http://host:19530, or a local milvus-lite file ending in .db."),
    collection: str = typer.Option("hlm_keywords", envvar="HLM_MILVUS_COLLECTION", help="Collection to create."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a collection that holds another artifact (or another index type)."),
    batch: int = typer.Option(256, min=1, help="Keywords per insert."),
    token: str = typer.Option("", envvar="HLM_MILVUS_TOKEN", help="Milvus token (user:password), if the cluster needs one."),
    index_type: str = typer.Option("HNSW", "--index-type", help=INDEX_TYPE_HELP),
    nlist: Optional[int] = typer.Option(None, min=1, help="IVF lists (IVF_* types); default 4 x sqrt(keywords)."),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", min=1, help="PQ sub-quantisers of 8 bits (IVF_PQ, HNSW_PQ); default dim / 8."),
) -> None:
    """Push an artifact's teacher keyword vectors into a Milvus collection (idempotent)."""
    from rich.progress import Progress

    from artifact.manifest import ArtifactError
    from retrieval.base import IndexUnavailable
    from retrieval.milvus import INDEX_TYPES, PushRefused, push_artifact

    if index_type.upper() not in INDEX_TYPES:
        typer.echo(f"hlm index push: unknown --index-type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}.", err=True)
        raise typer.Exit(2)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        if done == total:
            bar.update(task, description=f"building and loading the {index_type.upper()} index in Milvus")

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("inserting keywords", total=None)
            message = push_artifact(artifact, uri, collection, replace=replace, batch=batch, token=token,
                                    index_type=index_type, nlist=nlist, pq_m=pq_m, progress=progress)
    except (ArtifactError, PushRefused, IndexUnavailable, ValueError) as exc:
        typer.echo(f"hlm index push: {str(exc).rstrip('.')}.", err=True)
        raise typer.Exit(2)
    typer.echo(message)


@index_app.command("agreement")
def index_agreement(
    artifact: Path = typer.Argument(..., help="A verified artifact folder (pushed first if needed)."),
    uri: str = typer.Option(..., envvar="HLM_MILVUS_URI", help="Milvus URI."),
    collection: str = typer.Option("hlm_keywords", envvar="HLM_MILVUS_COLLECTION",
                                   help="The HNSW collection; another index type goes to COLLECTION_<type>."),
    queries: int = typer.Option(500, help="Real dev-split queries, encoded by the artifact's student (fp32)."),
    ef: list[int] = typer.Option([64], help="HNSW ef, the same for both backends (repeat for several)."),
    index_type: list[str] = typer.Option(["HNSW"], "--index-type", help="Index types to measure, each in its own "
                                         "collection (repeat for several). " + INDEX_TYPE_HELP),
    nprobe: list[int] = typer.Option([], help="IVF lists searched (IVF_* types; repeat for several); default: "
                                     "what the service uses (HLM_MILVUS_NPROBE's default)."),
    nlist: Optional[int] = typer.Option(None, min=1, help="IVF lists at build; default 4 x sqrt(keywords)."),
    out: Optional[Path] = typer.Option(None, help="Also write the rows as JSON here."),
) -> None:
    """Milvus' top-10 against exact search and against hnswlib, its time per query and build time, per index type."""
    import json
    import platform
    import time as _time

    from artifact.manifest import verify
    from benchmarks.index_bench import query_vectors
    from retrieval.hnsw import HnswIndex
    from retrieval.milvus import INDEX_TYPES, MilvusIndex, PushRefused, measure_agreement, push_artifact, read_artifact_keywords

    kinds = [k.upper() for k in index_type]
    unknown = [k for k in kinds if k not in INDEX_TYPES]
    if unknown:
        typer.echo(f"hlm index agreement: unknown --index-type {', '.join(unknown)}; choose among {', '.join(INDEX_TYPES)}.", err=True)
        raise typer.Exit(2)
    manifest = verify(artifact)
    idx = manifest["index"]
    ids, _, vectors = read_artifact_keywords(artifact, manifest)
    hnsw = HnswIndex(artifact / idx["path"], artifact / idx["store"], int(idx["dim"]), int(idx["ef"]))
    q, _ = query_vectors(artifact, "student", queries, None)
    rows, refused = [], []
    for kind in kinds:
        name = collection if kind == "HNSW" else f"{collection}_{kind.lower()}"
        timings: dict = {}
        t0 = _time.perf_counter()
        try:
            typer.echo(push_artifact(artifact, uri, name, index_type=kind, nlist=nlist, timings=timings))
        except PushRefused as exc:
            typer.echo(f"{kind}: {exc}")
            refused.append({"index_type": kind, "refused": str(exc)})
            continue
        push_s = _time.perf_counter() - t0 if timings else None
        milvus = MilvusIndex(uri, name, dim=int(idx["dim"]), artifact_sha256=manifest["artifact_sha256"], ef=int(idx["ef"]))
        milvus.verify()
        search = INDEX_TYPES[kind]["search"]
        for probe in (nprobe or [milvus.nprobe]) if search == "nprobe" else [None]:
            if probe is not None:
                milvus.nprobe = probe
            for r in measure_agreement(milvus, hnsw, ids, vectors, q, efs=ef if probe is None else ef[:1]):
                rows.append({"index_type": kind, "collection": name, "build_params": milvus.index_params,
                             "search": {search: probe if probe is not None else r["ef"]},
                             "push_s": push_s, "index_build_s": timings.get("index_s"), **r})
        milvus.close()
    typer.echo("| index | build params | search | queries | recall@10 Milvus | recall@10 hnswlib | overlap@10 Milvus/hnswlib "
               "| ms/query Milvus | ms/query hnswlib | added ms | index build s | push s |")
    typer.echo("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        built = "-" if r["index_build_s"] is None else f"{r['index_build_s']:.1f}"
        pushed = "-" if r["push_s"] is None else f"{r['push_s']:.1f}"
        params = ", ".join(f"{k} {v}" for k, v in sorted(r["build_params"].items()))
        search = ", ".join(f"{k} {v}" for k, v in r["search"].items())
        typer.echo(f"| {r['index_type']} | {params} | {search} | {r['queries']} | {r['recall_milvus']:.3f} | "
                   f"{r['recall_hnswlib']:.3f} | {r['overlap_milvus_hnswlib']:.3f} | {r['ms_per_query_milvus']:.2f} | "
                   f"{r['ms_per_query_hnswlib']:.3f} | {r['added_ms_per_query']:.2f} | {built} | {pushed} |")
    for r in refused:
        typer.echo(f"| {r['index_type']} | refused: {r['refused']} |")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"artifact": str(artifact), "uri": uri, "machine": platform.node(),
                                   "date_utc": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
                                   "rows": rows, "refused": refused}, indent=2) + "\n")



@app.command()
def compact(
    artifact: Path = typer.Option(Path("artifacts/demo"), envvar="HLM_ARTIFACT_DIR", help="The artifact the changes apply to."),
    state_dir: Path = typer.Option(..., envvar="HLM_STATE_DIR", help="The service's live keyword state folder."),
    out: Path = typer.Option(..., help="The new artifact folder (written whole, then renamed into place)."),
    threads: int = typer.Option(2, help="CPU threads for the graph build (and re-encoding, if the teacher differs)."),
):
    """Fold the live keyword changes (snapshot + log) into a new artifact with a rebuilt hnsw graph.

    Safe while the service runs. Serve the result with a reload; the state folder stays valid
    (its changes replay onto the new artifact as no-ops)."""
    import json

    from artifact.manifest import ArtifactError
    from service.live.compact import compact as fold

    try:
        result = fold(artifact, state_dir, out, threads=threads)
    except (ArtifactError, OSError, ValueError) as exc:
        typer.echo(f"hlm compact: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    app()
