"""Evaluation, apart from training: ranking metrics, the judged dev set, the quality gate, the
``hlm eval`` report and the frontier plot. Nothing here trains; the build and the studies call it."""
