"""Peers: the same student and the same hnswlib index, served the way others would serve it.

Benchmarks only (docs/BENCHMARKS.md); nothing here is part of the product. Each peer
exposes the product's search shape, ``POST /v1/search`` with ``{"query", "k", "encoder"}``
-> ``{"results": [{"query", "keywords": [{"id", "text", "score"}]}]}``, plus ``/readyz``,
so the existing harness (``python -m loadtest compare --server-cmd ...``) drives it
unchanged.

- ``st``: what a user would write first: sentence-transformers (PyTorch) inside a FastAPI
  route (a plain ``def``, so FastAPI runs it in its thread pool), then hnswlib.
  ``st_app.py``.
- ``infinity``: a dedicated embedding server from PyPI (``infinity-emb``, its torch
  engine) serving the same student from a local sentence-transformers folder, behind a
  thin FastAPI front that calls it over loopback HTTP and then searches hnswlib (two
  hops). ``infinity_front.py``.
- ``ours``: ``hlm serve`` itself, so one ``--server-cmd`` template starts all of them
  (``python -m benchmarks.peers serve``, the peer picked by ``HLM_PEER``).

The student's PyTorch form is rebuilt from the artifact's own ONNX file
(``st_student.py``): every weight of the transformer and of the 384->768 projection is
read from the ONNX initializers into sentence-transformers' MiniLM modules, so the peers
serve exactly the artifact's student, not a look-alike.
"""
