"""Benchmarks apart from the product: the encoders alone, the index alone, the FLOP floor,
and peer servers (sentence-transformers, infinity-emb) measured beside ours.

Not shipped in the serving image. Each module has its own command (see docs/BENCHMARKS.md).
"""
