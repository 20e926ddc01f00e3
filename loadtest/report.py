"""results.json and report.md for a sweep/compare run.

The summary answers the questions a reader has, in this order: how much load each encoder
sustains at the SLO and at the looser common SLO, how the student compares with the
teacher (ratios), and what every step measured (client from the scheduled start, and the
server's own histogram beside it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from loadtest.sweep import EncoderSweep, slo_key

BASELINE = "teacher"


def _common_rates(sweeps: Sequence[EncoderSweep]) -> list[float]:
    sets = [{s.offered_rps for s in sw.steps if s.offered_rps} for sw in sweeps]
    return sorted(set.intersection(*sets)) if sets else []


def _step_at(sw: EncoderSweep, rate: float):
    """The (last) step of ``sw`` at ``rate``."""
    found = [s for s in sw.steps if s.offered_rps == rate]
    return found[-1] if found else None


def comparison_rates(sweeps: Sequence[EncoderSweep], loose_slo_ms: float) -> dict[str, float | None]:
    """Two rates every encoder ran: the lightest, and the highest that all sustained loosely."""
    common = _common_rates(sweeps)
    light = common[0] if common else None
    key = slo_key(loose_slo_ms)
    both_ok = [r for r in common
               if all(sw.verdicts[sw.steps.index(_step_at(sw, r))][key]["sustained"] for sw in sweeps)]
    return {"light": light, "loaded": max(both_ok) if both_ok else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(sweeps: Sequence[EncoderSweep], slos_ms: Sequence[float]) -> dict:
    """Headline numbers and ratios of every encoder against the baseline (teacher)."""
    slos = sorted(slos_ms)
    rates = comparison_rates(sweeps, slos[-1])
    per_encoder = {}
    for sw in sweeps:
        row: dict = {"max_rps": dict(sw.max_rps), "capped": dict(sw.capped),
                     "generator_limited": sw.generator_limited, "monotonic": dict(sw.monotonic)}
        for name, rate in rates.items():
            st = _step_at(sw, rate) if rate else None
            row[f"at_{name}"] = None if st is None else {
                "offered_rps": rate,
                "client": {k: st.latency.get(k) for k in ("p50", "p90", "p99", "p99.9", "max")},
                "server_p99": (st.server or {}).get("p99"),
            }
        per_encoder[sw.encoder] = row
    labels = [sw.encoder for sw in sweeps]
    baseline = BASELINE if BASELINE in labels else labels[-1]
    ratios = {}
    b = per_encoder[baseline]
    for label in labels:
        if label == baseline:
            continue
        e = per_encoder[label]
        r: dict = {}
        for s in slos:
            k = slo_key(s)
            num, den = e["max_rps"].get(k), b["max_rps"].get(k)
            if num is not None and den is None:
                r[f"throughput_at_{k}ms"] = math.inf  # baseline never met this SLO
            else:
                r[f"throughput_at_{k}ms"] = _ratio(num, den)
        for name in rates:
            es, bs = e.get(f"at_{name}"), b.get(f"at_{name}")
            for p in ("p50", "p99"):
                r[f"{p}_latency_at_{name}"] = _ratio(es and es["client"][p], bs and bs["client"][p])
        ratios[f"{label}/{baseline}"] = r
    notes = []
    for sw in sweeps:
        strict = slo_key(slos[0])
        if sw.max_rps.get(strict) is None:
            extra = (" — expected: on these CPUs the teacher alone needs 30-48 ms per query, which is "
                     "the product's case for the student") if sw.encoder == BASELINE else ""
            notes.append(f"{sw.encoder} never met p99 <= {strict} ms at any tested rate{extra}.")
        if sw.generator_limited:
            notes.append(f"{sw.encoder}: the generator could not keep its schedule on some step; "
                         "rates beyond it measure the client, not the server.")
        for k, capped in sw.capped.items():
            if capped:
                notes.append(f"{sw.encoder} sustained p99 <= {k} ms at every rate up to {sw.max_rps[k]:g}/s, the "
                             "highest it was offered (max rate or time limit): its capacity is at least that.")
        for k, mono in sw.monotonic.items():
            if not mono:
                notes.append(f"{sw.encoder}: a lower rate failed p99 <= {k} ms below one that passed "
                             "(noisy machine); the max shown is the highest rate that passed.")
    return {"baseline": baseline, "comparison_rates": rates, "encoders": per_encoder,
            "ratios": ratios, "notes": notes}


def _clean(o):
    """JSON has no Infinity: write it as the string "inf"."""
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return "inf" if o > 0 else str(o)
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: Path, meta: dict, sweeps: Sequence[EncoderSweep], summary: dict) -> Path:
    doc = {"meta": meta, "summary": summary, "encoders": [sw.to_dict() for sw in sweeps]}
    path.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    return path


def _f(x, digits: int = 1, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}{unit}"


def _x(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.2f}×"


# The PNGs compare.write_run puts beside report.md: embedded by relative link, so the report
# shows them wherever the run folder is opened (a Git host, an editor's preview).
PLOTS = (("latency_vs_load.png", "Latency against offered load, by encoder"),
         ("latency_hist.png", "Latency distribution at a rate every encoder ran"))


def _times(x: float) -> str:
    return f"{x:.0f}×" if x >= 10 else f"{x:.1f}×"


def verdict(summary: dict, slos_ms: Sequence[float]) -> str:
    """One sentence a person can act on, from the summary's sustained rates.

    The first encoder that is not the baseline is set against the baseline at the strictest
    SLO that either met (e.g. "student sustains 11× the teacher at p99 ≤ 15 ms ...").
    """
    base = summary["baseline"]
    encoders = summary["encoders"]
    others = [name for name in encoders if name != base]
    if not others:
        return f"Only {base} was measured: compare it against another encoder in the same run before acting."
    name = others[0]
    e, b = encoders[name], encoders[base]

    def rate(row: dict, key: str) -> tuple[float | None, str]:
        value = row["max_rps"].get(key)
        return value, ("≥ " if value is not None and row["capped"].get(key) else "")

    for slo in sorted(slos_ms):
        key = slo_key(slo)
        (num, num_at_least), (den, den_at_least) = rate(e, key), rate(b, key)
        if num is None and den is None:
            continue
        if num is not None and den is not None and den > 0:
            ratio = num / den
            bound = "at least " if num_at_least and not den_at_least else ""
            if ratio >= 1:
                return (f"{name} sustains {bound}{_times(ratio)} the {base} at p99 ≤ {slo:g} ms "
                        f"({num_at_least}{num:g} vs {den_at_least}{den:g} requests/s): serve {name}, and size "
                        f"capacity from its {num:g} requests/s per process.")
            return (f"{base} sustains {_times(1 / ratio)} the {name} at p99 ≤ {slo:g} ms "
                    f"({den_at_least}{den:g} vs {num_at_least}{num:g} requests/s): do not replace the {base} "
                    f"with this {name}.")
        if num is not None:
            return (f"{name} sustains {num_at_least}{num:g} requests/s at p99 ≤ {slo:g} ms, a latency the {base} "
                    f"met at no tested rate: serve {name}, and size capacity from that rate per process.")
        return (f"Only the {base} met p99 ≤ {slo:g} ms ({den_at_least}{den:g} requests/s); {name} met it at no "
                f"tested rate: do not replace the {base} with this {name}.")
    loose = max(slos_ms) if slos_ms else 0
    return (f"Neither {name} nor {base} met p99 ≤ {loose:g} ms at any tested rate: check the server "
            "(CPU pinning, other load on the machine) before comparing.")


def markdown(meta: dict, sweeps: Sequence[EncoderSweep], summary: dict,
             plots: Sequence[tuple[str, str]] = PLOTS) -> str:
    slos = sorted(meta["slos_ms"])
    lines = [f"# Load test: {' vs '.join(sw.encoder for sw in sweeps)}", ""]
    lines += [
        f"- run: {meta['started_at']} → {meta.get('finished_at', '?')}, target {meta['url']}",
        f"- load: {meta['mode']}, steps of {meta['duration_s']:g} s after {meta['warmup_s']:g} s warm-up; "
        f"encoders alternate step by step; latency measured from the scheduled start",
        f"- SLOs: p99 ≤ {' ms and ≤ '.join(f'{s:g}' for s in slos)} ms, with no errors and ≥95 % of the offered rate answered",
        f"- CPUs: {meta['cpus']['note']}",
        f"- machine: {meta['machine']}",
        "",
        "## Summary",
        "",
    ]
    rates = summary["comparison_rates"]
    head = ["encoder"] + [f"max rps @ p99≤{s:g} ms" for s in slos]
    for name, rate in rates.items():
        if rate:
            head += [f"p50 / p99 @ {rate:g} rps ({name})", f"server p99 @ {rate:g} rps"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sw in sweeps:
        e = summary["encoders"][sw.encoder]
        row = [sw.encoder] + [("≥ " if e["capped"].get(slo_key(s)) else "") + _f(e["max_rps"].get(slo_key(s)), 1)
                              for s in slos]
        for name, rate in rates.items():
            if rate:
                at = e.get(f"at_{name}")
                row += [f"{_f(at and at['client']['p50'], 2)} / {_f(at and at['client']['p99'], 2)} ms",
                        _f(at and at["server_p99"], 2, " ms")]
        lines.append("| " + " | ".join(row) + " |")
    if summary["ratios"]:
        lines += ["", "## Ratios", "",
                  "Throughput ratios above 1 and latency ratios below 1 favour the first encoder "
                  "(a throughput with ≥ in the summary makes its ratio a lower bound).", "",
                  "| ratio | " + " | ".join(summary["ratios"]) + " |", "|---|" + "---|" * len(summary["ratios"])]
        keys = list(next(iter(summary["ratios"].values())))
        for k in keys:
            label = _ratio_label(k, rates)
            lines.append(f"| {label} | " + " | ".join(_x(r.get(k)) for r in summary["ratios"].values()) + " |")
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    if plots:
        lines += ["", "## Plots", ""]
        for name, alt in plots:
            lines += [f"![{alt}]({name})", ""]
        lines.pop()
    lines += ["", "## Steps in run order", "",
              "Client latency in ms from the scheduled start; server columns from /metrics histogram deltas "
              "(status 200, PromQL histogram_quantile interpolation).", ""]
    head = ["#", "encoder", "offered/s", "achieved/s", "p50", "p90", "p99", "p99.9", "max",
            "server p99", "server/s", "errors", "late sends"] + [f"@{s:g} ms" for s in slos]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, (sw, j) in enumerate(run_order(sweeps), start=1):
        s, v = sw.steps[j], sw.verdicts[j]
        errs = ", ".join(f"{k}:{c}" for k, c in sorted(s.errors.items())) or "0"
        srv = s.server or {}
        lines.append("| " + " | ".join([
            str(n), sw.encoder, _f(s.offered_rps, 1), _f(s.achieved_rps, 1),
            _f(s.latency.get("p50"), 2), _f(s.latency.get("p90"), 2), _f(s.latency.get("p99"), 2),
            _f(s.latency.get("p99.9"), 2), _f(s.latency.get("max"), 2),
            _f(srv.get("p99"), 2), _f(srv.get("rps"), 1), errs, str(s.generator_lag),
        ] + ["✓" if v[slo_key(x)]["sustained"] else "✗ " + v[slo_key(x)]["reason"] for x in slos]) + " |")
    lines += ["", "## Verdict", "", "**" + verdict(summary, slos) + "**"]
    return "\n".join(lines) + "\n"


def _ratio_label(key: str, rates: dict) -> str:
    """'throughput_at_15ms' -> 'throughput (max rps) at p99 ≤ 15 ms'; 'p99_latency_at_light' -> 'p99 latency at 5 rps'."""
    if key.startswith("throughput_at_"):
        return f"throughput (max rps) at p99 ≤ {key[len('throughput_at_'):-2]} ms"
    p, _, _, where = key.split("_", 3)
    rate = rates.get(where)
    at = f"{rate:g} rps" if rate else ("the highest rate all sustained" if where == "loaded" else where)
    return f"{p} latency at {at}" + (" (light load)" if where == "light" and rate else
                                    " (highest rate all sustained)" if where == "loaded" and rate else "")


def run_order(sweeps: Sequence[EncoderSweep]) -> list[tuple[EncoderSweep, int]]:
    """(sweep, step index) in the order the steps ran."""
    items = [(seq, k, j) for k, sw in enumerate(sweeps) for j, seq in enumerate(sw.seq)]
    return [(sweeps[k], j) for _, k, j in sorted(items)]
