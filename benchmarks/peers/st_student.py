"""The artifact's student as a sentence-transformers model, weights read from its ONNX file.

The student ONNX graph is a BERT-style transformer -> mean pooling -> L2 normalisation,
optionally followed by a Gemm projection (``projection.weight``/``projection.bias``,
e.g. MiniLM's 384->768) and another L2 normalisation. Students seen: MiniLM-L6 +
projection, and the first k layers of the teacher (mpnet), no projection. The exporter
keeps the BERT parameter names for embeddings, biases and LayerNorms; the dense weights
are anonymous (``onnx::MatMul_NNN``, stored [in, out]) but each is the second input of a
MatMul node named after its module (``/transformer/encoder/layer.0/attention/self/query/MatMul``),
which gives the name back. The config and tokenizer come from the folder the student
started from (the manifest's ``base_model``: all-MiniLM-L6-v2 from
``models.model_files.student_base_dir()``, or the teacher's folder for a cut of it),
truncated to the ONNX model's number of layers; the module stack is sentence-transformers'
own: Transformer, Pooling(mean), Normalize[, Dense(identity), Normalize].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_MATMUL_NODE = re.compile(r"^/transformer/(.+)/MatMul$")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def base_dir_for(manifest: dict) -> Path:
    """The folder the student was cut from, by the manifest's ``base_model``."""
    from models import model_files

    base = (manifest["encoders"]["student"].get("base_model") or model_files.STUDENT_BASE_NAME).lower()
    if "mpnet" in base:
        return model_files.teacher_dir()
    return model_files.student_base_dir()


def layer_count(state: dict) -> int:
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    return max(layers) + 1 if layers else 0


def student_weights_from_onnx(onnx_path: Path | str) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """(transformer state dict without the ``transformer.`` prefix, projection W [out, in] and
    b [out], or None, None when the student has no projection)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if name.startswith("transformer."):
            state[name[len("transformer."):]] = value
    projection_w = projection_b = None
    for node in model.graph.node:
        if node.op_type == "MatMul":
            match = _MATMUL_NODE.match(node.name)
            weight = next((x for x in node.input if x in inits), None)
            if match and weight is not None:
                key = match.group(1).replace("/", ".") + ".weight"
                state[key] = inits[weight].T  # ONNX MatMul stores [in, out]; nn.Linear wants [out, in]
        elif node.op_type == "Gemm" and node.name.startswith("/projection"):
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = inits[node.input[1]]
            projection_w = w if trans_b else w.T
            projection_b = inits[node.input[2]] if len(node.input) > 2 else np.zeros(projection_w.shape[0], np.float32)
    if projection_w is None:
        return state, None, None
    return state, projection_w.astype(np.float32), projection_b.astype(np.float32)


def build_st_student(artifact: Path | str, base_dir: Path | str | None = None, device: str = "cpu"):
    """A SentenceTransformer equal to the artifact's fp32 student ONNX (cosine ~1.0)."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    from artifact.manifest import verify

    artifact = Path(artifact)
    manifest = verify(artifact, checksums=False)
    enc = manifest["encoders"]["student"]
    base_dir = Path(base_dir) if base_dir else base_dir_for(manifest)
    state, proj_w, proj_b = student_weights_from_onnx(artifact / enc["onnx"])
    n_layers = layer_count(state)

    transformer = models.Transformer(str(base_dir), max_seq_length=int(enc.get("max_length", 128)))
    bert = transformer.auto_model
    if n_layers < len(bert.encoder.layer):  # a student cut from the base: keep its first layers
        bert.encoder.layer = bert.encoder.layer[:n_layers]
        bert.config.num_hidden_layers = n_layers
    own = bert.state_dict()
    tensors = {}
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"ONNX parameter {key} has no counterpart in the model from {base_dir}")
        if tuple(own[key].shape) != value.shape:
            raise ValueError(f"ONNX parameter {key} has shape {value.shape}, the model wants {tuple(own[key].shape)}")
        tensors[key] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
    missing = [k for k in own if k not in tensors and not k.startswith("pooler.") and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"the ONNX student lacks {len(missing)} parameters of {base_dir}, e.g. {missing[:3]}")
    bert.load_state_dict(tensors, strict=False)

    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    stack = [transformer, models.Pooling(dim_of(), pooling_mode="mean"), models.Normalize()]
    if proj_w is not None:
        dense = models.Dense(proj_w.shape[1], proj_w.shape[0], bias=True, activation_function=torch.nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(torch.from_numpy(proj_w))
            dense.linear.bias.copy_(torch.from_numpy(proj_b))
        stack += [dense, models.Normalize()]
    model = SentenceTransformer(modules=stack, device=device)
    model.eval()
    return model


def save_st_student(artifact: Path | str, out_dir: Path | str, base_dir: Path | str | None = None) -> Path:
    """Write the student as a sentence-transformers folder in the classic layout.

    The classic layout (``sentence_transformers.models.*`` module names, as in the
    all-MiniLM-L6-v2 folder itself) is written by hand rather than by ``model.save``:
    sentence-transformers 6 saves new module paths that the 3.x release infinity-emb pins
    cannot read, while every release reads the classic one. Torch-free (numpy + safetensors).
    """
    import shutil

    from safetensors.numpy import load_file, save_file

    from artifact.manifest import verify

    artifact, out_dir = Path(artifact), Path(out_dir)
    manifest = verify(artifact, checksums=False)
    enc = manifest["encoders"]["student"]
    base_dir = Path(base_dir) if base_dir else base_dir_for(manifest)
    state, proj_w, proj_b = student_weights_from_onnx(artifact / enc["onnx"])
    n_layers = layer_count(state)
    weights = {k: v for k, v in load_file(str(base_dir / "model.safetensors")).items()
               if not ((m := _LAYER.match(k)) and int(m.group(1)) >= n_layers)}
    for key, value in state.items():
        if key not in weights or weights[key].shape != value.shape:
            raise ValueError(f"ONNX parameter {key} does not fit the MiniLM model in {base_dir}")
        weights[key] = np.ascontiguousarray(value, dtype=np.float32)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    config = json.loads((base_dir / "config.json").read_text())
    config["num_hidden_layers"] = n_layers
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    hidden = int(config["hidden_size"])
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    if proj_w is not None:
        modules += [("3_Dense", "Dense"), ("4_Normalize", "Normalize")]
    (out_dir / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (path, kind) in enumerate(modules)], indent=2) + "\n")
    (out_dir / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": int(enc.get("max_length", 128)), "do_lower_case": False}) + "\n")
    for path, kind in modules[1:]:
        (out_dir / path).mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n")
    if proj_w is not None:
        (out_dir / "3_Dense" / "config.json").write_text(json.dumps({
            "in_features": hidden, "out_features": int(proj_w.shape[0]), "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"}, indent=2) + "\n")
        save_file({"linear.weight": np.ascontiguousarray(proj_w), "linear.bias": np.ascontiguousarray(proj_b)},
                  str(out_dir / "3_Dense" / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "hlm_source.json").write_text(json.dumps(
        {"artifact": str(artifact.resolve()), "onnx": enc["onnx"], "base": str(base_dir)}) + "\n")
    return out_dir
