"""The floor: FLOPs per query of each encoder against this machine's matrix-multiply rate.

FLOPs are counted from the architecture: every matrix multiply of one batch-1 forward
pass, multiply-adds x 2 (softmax, LayerNorm, GELU, pooling and embeddings are left out:
a few per cent at these sizes). Per layer, for ``L`` tokens, hidden ``h``, FFN ``f``,
``a`` heads of ``h/a``:

    Q, K, V, output projections   4 x [L x h] x [h x h]
    attention scores, context     2 x a x [L x h/a] x [h/a x L]   (= 2 L^2 h)
    FFN up, down                  [L x h] x [h x f],  [L x f] x [f x h]

plus the student's 384->768 projection, once per query after pooling.

The rates are measured here, one thread: numpy float32 matmul (OpenBLAS sgemm) at the
very shapes a batch-1 forward pass has, and at a big square size for the peak; and ONNX
Runtime's fp32 MatMul and its dynamically quantised int8 MatMul (the exporter's settings:
per-channel, reduce_range) at the same shapes. The floor of a model is the sum, over its
matrix multiplies, of FLOPs / the measured rate at that shape ("shape floor"), and FLOPs /
the peak ("peak floor"). Against the measured batch-1 latency
(``python -m benchmarks.encoder_bench ... --out FILE``) that says how far the encoders are
above what the arithmetic alone needs.

    python -m benchmarks.flops [--encoder-bench runs/bench/encoder_bench.json] [--out runs/bench/flops.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from loadtest.cpus import cpu_model_name


@dataclass(frozen=True)
class Arch:
    """A BERT-style encoder, as far as its matrix multiplies go."""

    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    projection_out: int | None = None  # a linear map after pooling (the student's 384->768)


TEACHER = Arch("teacher all-mpnet-base-v2", layers=12, hidden=768, ffn=3072, heads=12)
STUDENT = Arch("student MiniLM-L6 + 384->768", layers=6, hidden=384, ffn=1536, heads=12, projection_out=768)
ARCHS = {"teacher": TEACHER, "student": STUDENT}


def arch_of_onnx(onnx_path: Path | str, name: str, heads: int) -> Arch:
    """The architecture of an exported encoder, read from its ONNX initializers (layers from
    the ``encoder.layer.N`` names, hidden and FFN widths from the bias sizes, the
    projection from ``projection.weight``). ``heads`` comes from the model's config."""
    import re

    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    layers = {int(m.group(1)) for k in dims if (m := re.search(r"encoder\.layer\.(\d+)\.", k))}
    hidden = next(v[0] for k, v in dims.items() if k.endswith("encoder.layer.0.output.dense.bias"))
    ffn = next(v[0] for k, v in dims.items() if k.endswith("encoder.layer.0.intermediate.dense.bias"))
    projection = dims.get("projection.weight")
    return Arch(name, layers=max(layers) + 1, hidden=hidden, ffn=ffn, heads=heads,
                projection_out=projection[0] if projection else None)


def artifact_archs(artifact: Path) -> dict[str, Arch]:
    """teacher and the artifact's own student (whatever it is now), plus the MiniLM-L6 reference."""
    from benchmarks.peers.st_student import base_dir_for
    from artifact.manifest import verify

    manifest = verify(artifact, checksums=False)
    enc = manifest["encoders"]["student"]
    heads = int(json.loads((base_dir_for(manifest) / "config.json").read_text())["num_attention_heads"])
    student = arch_of_onnx(artifact / enc["onnx"], f"student: {enc.get('model', 'artifact student')}", heads)
    out = {"teacher": TEACHER, "student": student}
    if student != STUDENT:
        out["minilm_l6"] = STUDENT
    return out


@dataclass(frozen=True)
class MatMul:
    """``count`` x ([m x k] x [k x n]); ``batch`` > 1 means one batched call of that many (attention heads)."""

    what: str
    m: int
    k: int
    n: int
    count: int = 1
    batch: int = 1
    weights: bool = True  # a constant weight matrix (quantised in the int8 model); False: activation x activation

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count * self.batch

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.m, self.k, self.n)


def matmuls(arch: Arch, tokens: int) -> list[MatMul]:
    """Every matrix multiply of one query of ``tokens`` tokens (batch 1)."""
    L, h, f, a = tokens, arch.hidden, arch.ffn, arch.heads
    if h % a:
        raise ValueError(f"hidden {h} is not a multiple of {a} heads")
    d = h // a
    n = arch.layers
    out = [
        MatMul("Q, K, V, output projections", L, h, h, count=4 * n),
        MatMul("attention scores Q K^T", L, d, L, count=n, batch=a, weights=False),
        MatMul("attention context P V", L, L, d, count=n, batch=a, weights=False),
        MatMul("FFN up", L, h, f, count=n),
        MatMul("FFN down", L, f, h, count=n),
    ]
    if arch.projection_out:
        out.append(MatMul("projection after pooling", 1, h, arch.projection_out))
    return out


def macs(arch: Arch, tokens: int) -> int:
    return sum(mm.macs for mm in matmuls(arch, tokens))


def flops(arch: Arch, tokens: int) -> int:
    """Multiply-adds x 2."""
    return 2 * macs(arch, tokens)


# ---------------------------------------------------------------- measured rates


def _time_per_call(fn: Callable[[], object], min_time_s: float, repeats: int, max_calls: int = 100_000) -> float:
    """Median seconds per call over ``repeats`` timed runs of about min_time_s/repeats each (bounded)."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < 0.02 and calls < 1000:
        fn()
        calls += 1
    per = max((time.perf_counter() - start) / max(calls, 1), 1e-7)
    n = int(min(max_calls, max(1, min_time_s / repeats / per)))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def single_thread_blas():
    """A context manager pinning numpy's BLAS to one thread (threadpoolctl if present)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1)
    except ImportError:  # pragma: no cover - then set OPENBLAS_NUM_THREADS=1 before starting
        from contextlib import nullcontext

        return nullcontext()


def numpy_rate(batch: int, m: int, k: int, n: int, min_time_s: float = 0.3, repeats: int = 5) -> float:
    """GFLOP/s of float32 ``[batch] x [m x k] @ [k x n]`` on one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, m, k) if batch > 1 else (m, k)).astype(np.float32)
    b = rng.standard_normal((batch, k, n) if batch > 1 else (k, n)).astype(np.float32)
    out = np.empty((batch, m, n) if batch > 1 else (m, n), dtype=np.float32)
    with single_thread_blas():
        sec = _time_per_call(lambda: np.matmul(a, b, out=out), min_time_s, repeats)
    return 2 * batch * m * k * n / sec / 1e9


def _matmul_model(path: Path, m: int, k: int, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.save(model, str(path))


def onnx_rates(m: int, k: int, n: int, min_time_s: float = 0.3, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of ONNX Runtime's MatMul [m x k] x [k x n] (constant weights), one thread:
    fp32, and int8 after the exporter's dynamic quantisation (per-channel, reduce_range).
    The int8 time includes quantising the activations, as in the real model."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "mm.onnx"
        int8 = Path(tmp) / "mm.int8.onnx"
        _matmul_model(fp32, m, k, n)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"x": x}
            sec = _time_per_call(lambda: sess.run(None, feed), min_time_s, repeats)
            out[name] = 2 * m * k * n / sec / 1e9
    return out


def ort_call_overhead_us(repeats: int = 5) -> float:
    """Microseconds of one ONNX Runtime call that does almost nothing (Identity on 1 float)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.zeros(1, np.float32)
    return _time_per_call(lambda: sess.run(None, {"x": x}), 0.2, repeats) * 1e6


def measure_rates(shapes: set[tuple[int, int, int, int]], *, peak_size: int = 2048, onnx: bool = True,
                  min_time_s: float = 0.3) -> dict:
    """Rates (GFLOP/s) per shape ``(batch, m, k, n)``: numpy always; ONNX fp32/int8 for the
    weight shapes (batch 1). Plus the peak (square ``peak_size``) and the ORT call overhead."""
    rows = {}
    for shape in sorted(shapes):
        batch, m, k, n = shape
        row = {"numpy_fp32": numpy_rate(batch, m, k, n, min_time_s)}
        if onnx and batch == 1:
            row.update(onnx_rates(m, k, n, min_time_s))
        rows[_key(shape)] = row
    s = peak_size
    peak = {"numpy_fp32": numpy_rate(1, s, s, s, min_time_s=max(min_time_s, 1.0), repeats=3)}
    if onnx:
        peak.update(onnx_rates(s, s, s, min_time_s=max(min_time_s, 1.0), repeats=3))
    return {"shapes": rows, "peak": {"size": s, **peak},
            "ort_call_overhead_us": ort_call_overhead_us() if onnx else None}


def _key(shape: tuple[int, int, int, int]) -> str:
    b, m, k, n = shape
    return (f"{b}x" if b > 1 else "") + f"[{m}x{k}]x[{k}x{n}]"


def floors(arch: Arch, tokens: int, rates: dict) -> dict:
    """Milliseconds the matrix multiplies alone need, at the measured rates.

    ``peak_floor``: every FLOP at the best rate measured anywhere (the big square; fp32:
    the better of numpy and ORT; int8: ORT's int8 for the weight MatMuls, fp32 peak for the
    attention products, which dynamic quantisation leaves in fp32). ``shape_floor``: each
    matrix multiply at the rate measured for its own shape, per runtime."""
    peak = rates["peak"]
    total = flops(arch, tokens)
    weight_flops = sum(2 * mm.macs for mm in matmuls(arch, tokens) if mm.weights)
    peak_fp32 = max(peak["numpy_fp32"], peak.get("ort_fp32", 0.0))
    out = {"tokens": tokens, "gflop": total / 1e9, "peak_fp32_gflops": peak_fp32,
           "peak_floor_ms_fp32": total / (peak_fp32 * 1e9) * 1e3}
    if "ort_int8" in peak:
        out["peak_floor_ms_int8"] = (weight_flops / (peak["ort_int8"] * 1e9)
                                     + (total - weight_flops) / (peak_fp32 * 1e9)) * 1e3
    shape_ms = {"numpy_fp32": 0.0, "ort_fp32": 0.0, "ort_int8": 0.0}
    for mm in matmuls(arch, tokens):
        row = rates["shapes"][_key(mm.shape)]
        f = 2 * mm.macs
        shape_ms["numpy_fp32"] += f / (row["numpy_fp32"] * 1e9) * 1e3
        if "ort_fp32" in row:
            shape_ms["ort_fp32"] += f / (row["ort_fp32"] * 1e9) * 1e3
            shape_ms["ort_int8"] += f / (row["ort_int8"] * 1e9) * 1e3
        else:  # activation x activation (attention): fp32 in both models, at numpy's rate for that shape
            shape_ms["ort_fp32"] += f / (row["numpy_fp32"] * 1e9) * 1e3
            shape_ms["ort_int8"] += f / (row["numpy_fp32"] * 1e9) * 1e3
    out["shape_floor_ms_numpy_fp32"] = shape_ms["numpy_fp32"]
    if "ort_fp32" in peak:
        out["shape_floor_ms_ort_fp32"] = shape_ms["ort_fp32"]
        out["shape_floor_ms_ort_int8"] = shape_ms["ort_int8"]
    return out


def query_token_counts(artifact: Path, n: int = 300) -> dict[str, float]:
    """Median tokens (with [CLS]/[SEP]) of encoder_bench's queries under each encoder's tokenizer."""
    from benchmarks.encoder_bench import _queries
    from artifact.manifest import verify
    from retrieval.onnx_encoder import load_tokenizer

    manifest = verify(artifact, checksums=False)
    queries = _queries(n)
    out = {}
    for name in ("teacher", "student"):
        tok = load_tokenizer(artifact / manifest["encoders"][name]["tokenizer"])
        tok.no_padding()
        out[name] = float(statistics.median(len(e.ids) for e in tok.encode_batch(queries)))
    return out


def machine() -> dict:
    cpu = cpu_model_name() or platform.processor()
    flags = ""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "avx2": " avx2" in flags, "avx512f": " avx512f" in flags,
            "avx_vnni": "avx_vnni" in flags or "avx512_vnni" in flags,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run(token_counts: list[int], *, archs: dict[str, Arch] | None = None, onnx: bool = True, peak_size: int = 2048,
        min_time_s: float = 0.3, bench: dict | None = None, rates: dict | None = None) -> dict:
    """Measure the rates (unless ``rates`` from an earlier run are given) and the floors."""
    archs = archs or ARCHS
    shapes = {mm.shape for arch in archs.values() for t in token_counts for mm in matmuls(arch, t)}
    if rates is None:
        rates = measure_rates(shapes, peak_size=peak_size, onnx=onnx, min_time_s=min_time_s)
    else:
        missing = sorted(_key(s) for s in shapes if _key(s) not in rates["shapes"])
        if missing:
            raise ValueError(f"the given rates lack shapes {missing[:4]}...; measure them (drop --rates-from)")
    result = {"machine": machine(), "rates_gflops": rates, "archs": {k: asdict(v) for k, v in archs.items()},
              "floors": {name: [floors(arch, t, rates) for t in token_counts] for name, arch in archs.items()}}
    if bench:
        result["vs_measured"] = vs_measured(result["floors"], bench)
    return result


def vs_measured(floor_rows: dict, bench: dict) -> dict:
    """Measured batch-1 median / floor, at the bench queries' median token count (nearest row)."""
    rows = bench["rows"]
    tokens = bench.get("tokens") or {}
    out = {}
    for label, row in rows.items():
        name, _, precision = label.partition("_")
        if name not in floor_rows:
            continue
        t = tokens.get(name)
        candidates = floor_rows[name]
        floor = min(candidates, key=lambda r: abs(r["tokens"] - t)) if t else candidates[0]
        int8 = precision == "int8"
        measured = row["batch1_median_ms"]
        shape_floor = floor.get("shape_floor_ms_ort_int8" if int8 else "shape_floor_ms_ort_fp32") \
            or floor["shape_floor_ms_numpy_fp32"]
        peak_floor = floor.get("peak_floor_ms_int8" if int8 else "peak_floor_ms_fp32") or floor["peak_floor_ms_fp32"]
        out[label] = {"measured_ms": measured, "tokens": floor["tokens"], "shape_floor_ms": shape_floor,
                      "peak_floor_ms": peak_floor, "x_above_shape_floor": measured / shape_floor,
                      "x_above_peak_floor": measured / peak_floor}
    return out


def markdown(result: dict) -> str:
    nan = float("nan")
    lines = ["| encoder | tokens | GFLOP/query | floor ms at peak fp32 | at peak int8 | at batch-1 shape rates: numpy fp32 | ORT fp32 | ORT int8 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in result["floors"].items():
        for r in rows:
            lines.append(f"| {name} | {r['tokens']} | {r['gflop']:.3f} | {r['peak_floor_ms_fp32']:.3f} | "
                         f"{r.get('peak_floor_ms_int8', nan):.3f} | {r['shape_floor_ms_numpy_fp32']:.3f} | "
                         f"{r.get('shape_floor_ms_ort_fp32', nan):.3f} | {r.get('shape_floor_ms_ort_int8', nan):.3f} |")
    lines += ["", "| shape (one thread) | numpy fp32 GFLOP/s | ORT fp32 | ORT int8 |", "|---|---|---|---|"]
    rates = result["rates_gflops"]
    for key, row in list(rates["shapes"].items()) + [(f"peak [{rates['peak']['size']}]^3", rates["peak"])]:
        lines.append(f"| {key} | {row['numpy_fp32']:.1f} | {row.get('ort_fp32', float('nan')):.1f} | "
                     f"{row.get('ort_int8', float('nan')):.1f} |")
    if result.get("vs_measured"):
        lines += ["", "| encoder | measured batch-1 median ms | tokens | shape floor ms | × above | peak floor ms | × above |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in result["vs_measured"].items():
            lines.append(f"| {label} | {r['measured_ms']:.2f} | {r['tokens']} | {r['shape_floor_ms']:.3f} | "
                         f"{r['x_above_shape_floor']:.1f} | {r['peak_floor_ms']:.3f} | {r['x_above_peak_floor']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8, 16], help="query lengths, tokens incl. [CLS]/[SEP]")
    ap.add_argument("--artifact", type=Path, default=Path("artifacts/demo"),
                    help="adds the median token count of encoder_bench's queries to --tokens")
    ap.add_argument("--encoder-bench", type=Path, help="JSON from `python -m benchmarks.encoder_bench ... --out`")
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per shape and runtime")
    ap.add_argument("--no-onnx", action="store_true", help="numpy only")
    ap.add_argument("--rates-from", type=Path, help="reuse the rates measured by an earlier run (its --out JSON)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    tokens = list(args.tokens)
    bench = json.loads(args.encoder_bench.read_text()) if args.encoder_bench else None
    archs = dict(ARCHS)
    if args.artifact and (args.artifact / "manifest.json").is_file():
        archs = artifact_archs(args.artifact)
        counts = query_token_counts(args.artifact)
        tokens += [round(c) for c in counts.values()]
        if bench is not None:
            bench["tokens"] = counts
    tokens = sorted(set(tokens))
    rates = json.loads(args.rates_from.read_text())["rates_gflops"] if args.rates_from else None
    result = run(tokens, archs=archs, onnx=not args.no_onnx, peak_size=args.peak_size, min_time_s=args.min_time,
                 bench=bench, rates=rates)
    if rates is not None:
        result["rates_from"] = str(args.rates_from)
    if bench is not None:
        result["encoder_bench"] = {"meta": bench.get("meta"), "tokens": bench.get("tokens")}
    print(json.dumps(result["machine"]))
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
