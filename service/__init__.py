"""The HTTP service: settings, app factory, routes, micro-batcher, metrics (no torch)."""
