"""Torch-free backends shared by the build, the service and the benchmarks.

- ``base``: the ``Encoder`` and ``VectorIndex`` interfaces.
- ``onnx_encoder``: ONNX Runtime + tokenizers (CPU or CUDA provider).
- ``hnsw``: the hnswlib index (the embedded default).
- ``exact``: exact top-k and recall, the ground truth every index is measured against.
"""
