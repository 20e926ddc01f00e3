"""Export a SentenceEncoder to ONNX, make its int8 copy, and check parity.

- ``torch.onnx.export`` (TorchScript exporter: stable for BERT/MPNet and needs no extra
  runtime) with dynamic batch and sequence axes; inputs ``input_ids``/``attention_mask``,
  output ``embedding`` (already pooled and normalised).
- int8: ONNX Runtime's dynamic quantisation, per-channel, ``reduce_range=True``: on these
  AVX2 CPUs without VNNI the full 8-bit range saturates and breaks MPNet models.
- Parity: the exported graph against PyTorch on real texts; mean and min cosine.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.encoders import SentenceEncoder

ONNX_OPSET = 17


def export_onnx(model: SentenceEncoder, path: Path, tokenizer_json: Path) -> None:
    from retrieval.onnx_encoder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_json)
    sample = tokenizer.encode_batch(["a sample query", "a second, longer sample query text"])
    input_ids = torch.tensor([e.ids for e in sample], dtype=torch.long)
    attention_mask = torch.tensor([e.attention_mask for e in sample], dtype=torch.long)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (input_ids, attention_mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 copy: per-channel weights, reduce_range for AVX2 CPUs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


# Calibration inputs are cut (and, for histogram methods, padded) to this many tokens: the
# queries the service sees are short, and a fixed shape is what the histograms need.
CALIBRATION_TOKENS = 32


def quantize_int8_static(source: Path, target: Path, tokenizer_json: Path, calibration_texts: Sequence[str],
                         method: str = "minmax", activation_output_fp32: bool = False) -> None:
    """Static (calibrated) int8 copy: activation scales fixed from ``calibration_texts`` (train-split
    queries), so a text's vector no longer depends on its batch-mates and the model may batch.

    QDQ format, per-channel int8 weights, reduce_range as above; MatMul/Gemm only, like the
    dynamic copy, so the two differ in where the activation scales come from and nothing else.
    ``activation_output_fp32``: the MatMuls that read the feed-forward activation's output
    (GELU) stay fp32. That input's outliers ruin one fixed scale: on the mpnet-l2 student,
    mean cosine to fp32 over 200 dev queries was 0.824 with every MatMul quantized, 0.987
    with those two kept (0.827-0.831 keeping q/k/v, the attention output or the FFN input
    instead; 0.984 for the dynamic copy).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from retrieval.onnx_encoder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_json)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(list(calibration_texts))

        def get_next(self):
            text = next(self.items, None)
            if text is None:
                return None
            e = tokenizer.encode(text)
            ids, mask = e.ids[:CALIBRATION_TOKENS], [1] * min(len(e.ids), CALIBRATION_TOKENS)
            if method != "minmax":  # ORT's histogram collectors need one shape for every input
                pad = CALIBRATION_TOKENS - len(ids)
                ids, mask = ids + [tokenizer.token_to_id("<pad>") or 0] * pad, mask + [0] * pad
            return {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.array([mask], dtype=np.int64)}

    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_name(target.stem + ".prep.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = _matmuls_after_activation(prepared) if activation_output_fp32 else []
        quantize_static(
            str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            # Percentile: clip the activation range at the 99.99th percentile (outliers would
            # otherwise stretch the scale and flatten everything else).
            extra_options={"CalibPercentile": 99.99} if method == "percentile" else None,
            nodes_to_exclude=excluded,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _matmuls_after_activation(model_path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes whose input is a GELU's output: a Gelu node, or the Mul
    that ends its erf/tanh form (``x * 0.5 * (1 + erf(x / sqrt 2))``) as exported."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def upstream(node, depth: int) -> set[str]:
        kinds = {node.op_type}
        if depth:
            for name in node.input:
                if name in producer:
                    kinds |= upstream(producer[name], depth - 1)
        return kinds

    names = []
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type in ("MatMul", "Gemm") and node.input else None
        if source is None:
            continue
        if source.op_type in ("Gelu", "FastGelu", "BiasGelu") or (
                source.op_type == "Mul" and upstream(source, 3) & {"Erf", "Tanh"}):
            names.append(node.name)
    return names


def torch_encode(model: SentenceEncoder, tokenizer_json: Path, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    from retrieval.onnx_encoder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_json)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer.encode_batch(list(texts[start : start + batch_size]))
            ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
            out.append(model(ids, mask).numpy())
    return np.concatenate(out)


def cosine_parity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "texts": int(len(cos))}


def copy_tokenizer(source_json: Path, target_json: Path, max_length: int) -> None:
    """Copy tokenizer.json with fixed-length padding off and truncation at max_length."""
    from retrieval.onnx_encoder import load_tokenizer

    target_json.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(source_json, max_length)
    tokenizer.no_padding()  # the runtime pads each batch to its longest member
    tokenizer.save(str(target_json))
    if not target_json.is_file():  # pragma: no cover - tokenizers always writes or raises
        shutil.copy(source_json, target_json)
