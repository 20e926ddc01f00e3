"""PNG plots of a run (matplotlib, Agg backend: no display needed).

- latency against offered load: client p50/p99/p99.9 per encoder (from the scheduled
  start), the server's p99 beside them, and the SLO lines;
- latency histogram: the distribution of every encoder at one common rate, so the shape of
  the tail is visible, not only its percentiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from loadtest import latency  # noqa: E402
from loadtest.sweep import EncoderSweep  # noqa: E402

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange")


def plot_latency_vs_load(sweeps: Sequence[EncoderSweep], slos_ms: Sequence[float], path: Path,
                         title: str = "Latency against offered load") -> Path:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for sw, color in zip(sweeps, COLORS):
        steps = sorted((s for s in sw.steps if s.offered_rps and s.latency.get("count")),
                       key=lambda s: s.offered_rps)
        if not steps:
            continue
        x = [s.offered_rps for s in steps]
        for key, style in (("p50", ":"), ("p99", "-"), ("p99.9", "--")):
            ax.plot(x, [s.latency[key] for s in steps], style, color=color, marker="o", ms=3,
                    label=f"{sw.encoder} {key}")
        srv = [(s.offered_rps, s.server["p99"]) for s in steps if s.server and s.server.get("p99")]
        if srv:
            ax.plot(*zip(*srv), "x", color=color, ms=7, label=f"{sw.encoder} server p99")
    for slo in slos_ms:
        ax.axhline(slo, color="grey", lw=0.8, ls="-.")
        ax.annotate(f"SLO {slo:g} ms", (ax.get_xlim()[0], slo), fontsize=8, color="grey",
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency from scheduled start (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_histograms(sweeps: Sequence[EncoderSweep], rate: float | None, path: Path) -> Path:
    """Latency distribution of each encoder at ``rate`` (or its lightest step if None)."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    lo, hi = None, None
    data = []
    for sw in sweeps:
        steps = [s for s in sw.steps if s.hdr_latency and (rate is None or s.offered_rps == rate)]
        if not steps:
            continue
        step = steps[-1] if rate is not None else min(steps, key=lambda s: s.offered_rps or 0)
        values, counts = latency.recorded_values_ms(latency.decode(step.hdr_latency))
        if not values:
            continue
        data.append((sw.encoder, step, values, counts))
        lo = min(values) if lo is None else min(lo, min(values))
        hi = max(values) if hi is None else max(hi, max(values))
    if data:
        bins = np.logspace(np.log10(max(lo, 1e-3) * 0.9), np.log10(hi * 1.1), 60)
        for (name, step, values, counts), color in zip(data, COLORS):
            weights = np.asarray(counts, dtype=float) / sum(counts) * 100.0
            ax.hist(values, bins=bins, weights=weights, histtype="step", lw=1.5, color=color,
                    label=f"{name} @ {step.offered_rps:g} rps (n={sum(counts)})")
            ax.axvline(step.latency["p99"], color=color, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("latency from scheduled start (ms); dashed: p99")
    ax.set_ylabel("% of requests")
    ax.set_title("Latency distribution" + (f" at {rate:g} requests/s" if rate else ""))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
