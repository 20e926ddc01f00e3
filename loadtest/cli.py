"""``python -m loadtest run|sweep|compare|floor|promcheck``: the harness on its own.

The project CLI (``hlm loadtest ...``) calls the same library functions; this one exists
so the harness is usable without it. Every command targets 127.0.0.1 unless
``--allow-remote`` is given with a URL you are responsible for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtest.targets import DEFAULT_URL


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
    p.add_argument("--queries", nargs="*", type=Path,
                   help="query files (TSV/CSV with a 'query' column, or one per line); "
                        "default: msmarco_queries.tsv + mq_topics.tsv in $HLM_DATA_DIR")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s")
    p.add_argument("--arrivals", choices=("constant", "poisson"), default="constant")


def _sweep_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo-ms", type=float, default=15.0)
    p.add_argument("--loose-slo-ms", type=float, default=100.0, help="common looser SLO (0: none)")
    p.add_argument("--start-rps", type=float, default=5.0)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--max-rps", type=float, default=4000.0)
    p.add_argument("--refine", type=int, default=2, help="bisection steps per SLO boundary")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per step (excluded)")
    p.add_argument("--max-total", type=float, default=1800.0, help="stop the whole run after this many s")
    p.add_argument("--out", type=Path, help="run folder (default runs/loadtest-<timestamp>)")
    p.add_argument("--server-cmd", help="start the service ourselves; '{port}' is replaced by a free port")
    p.add_argument("--server-cpus", help="CPU list for the server we start, e.g. 0 or 0-2")
    p.add_argument("--generator-cpus", help="CPU list for the generator")
    p.add_argument("--no-pin", action="store_true", help="do not pin generator/server to separate cores")


def build_parser(prog: str = "python -m loadtest") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0].replace("python -m loadtest", prog))
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="one step at one rate (open loop) or N clients (closed loop)")
    _common(run)
    run.add_argument("--encoder", default="student", help="name, or label={json body}")
    run.add_argument("--rate", type=float, default=50.0, help="offered requests/s (open loop)")
    run.add_argument("--duration", type=float, default=10.0)
    run.add_argument("--warmup", type=float, default=2.0)
    run.add_argument("--closed", type=int, metavar="N", help="closed loop with N concurrent clients instead")
    run.add_argument("--connections", type=int, default=512,
                     help="open loop: the pool of keep-alive connections the requests share (one address; "
                          "a request waits for a free one)")
    run.add_argument("--generator-cpus", help="pin this process to these CPUs, e.g. 1")
    run.add_argument("--json", type=Path, help="also write the StepResult here")

    for name, helptext in (("sweep", "raise the rate until each encoder fails its SLO"),
                           ("compare", "student vs teacher, alternating steps, report + plots")):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        _sweep_opts(p)
        p.add_argument("--encoder", action="append", dest="encoders",
                       help="repeatable; name or label={json body} (default: "
                            + ("student" if name == "sweep" else "student and teacher") + ")")

    fl = sub.add_parser("floor", help="serve the bare ASGI app (the floor hlm serve is measured against)")
    fl.add_argument("--artifact", type=Path, required=True, help="artifact folder (its student and hnswlib index)")
    fl.add_argument("--port", type=int, default=8100)

    pc = sub.add_parser("promcheck", help="compare our p99 maths with a real Prometheus")
    pc.add_argument("--url", default=DEFAULT_URL)
    pc.add_argument("--allow-remote", action="store_true")
    pc.add_argument("--encoder", action="append", dest="encoders")
    pc.add_argument("--rate", type=float, default=50.0)
    pc.add_argument("--duration", type=float, default=8.0)
    pc.add_argument("--rules", type=Path, help="recording rules file (default docker/prometheus/rules.yml)")
    return ap


def _cpus(text: str | None):
    from loadtest.cpus import parse_cpu_list

    return parse_cpu_list(text) if text else None


def _print_step(step) -> None:
    lat, srv = step.latency, step.server or {}
    what = f"{step.offered_rps:g}/s offered" if step.offered_rps else f"{step.concurrency} clients"
    print(f"{step.encoder} [{step.mode}] {what}: sent {step.sent} ({step.sent_rps:.1f}/s), ok {step.ok} "
          f"({step.achieved_rps:.1f}/s), errors {step.errors or 0}, late sends {step.generator_lag}")
    print("  client ms (from scheduled start): " + "  ".join(
        f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max") if lat.get(k) is not None))
    if srv:
        print(f"  server: {srv['ok_requests']} ok ({srv['rps']:.1f}/s), p50 {srv['p50'] or 0:.2f} "
              f"p99 {srv['p99'] or 0:.2f} ms, by status {srv['by_status']}, rejected {srv['rejected'] or 0}")
    elif step.server_note:
        print(f"  server: {step.server_note}")


def main(argv: list[str] | None = None, prog: str = "python -m loadtest") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.cmd == "run":
        from loadtest.cpus import pinned
        from loadtest.queries import load_queries
        from loadtest.runner import run_step

        with pinned(_cpus(args.generator_cpus)):
            step = run_step(
                args.url, args.encoder, args.rate, args.duration, warmup_s=args.warmup,
                queries=load_queries(args.queries or None), arrivals=args.arrivals, k=args.k,
                timeout_s=args.timeout, allow_remote=args.allow_remote,
                mode="closed" if args.closed else "open", concurrency=args.closed or 8,
                max_connections=args.connections,
            )
        _print_step(step)
        if args.json:
            args.json.write_text(json.dumps(step.to_dict(), indent=2) + "\n")
        return 0
    if args.cmd in ("sweep", "compare"):
        from loadtest.compare import compare

        default = ["student"] if args.cmd == "sweep" else ["student", "teacher"]
        folder = compare(
            None if args.server_cmd and args.url == DEFAULT_URL else args.url,
            encoders=args.encoders or default, out_dir=args.out, server_cmd=args.server_cmd,
            server_cpus=_cpus(args.server_cpus), generator_cpus=_cpus(args.generator_cpus),
            pin=not args.no_pin, slo_ms=args.slo_ms, loose_slo_ms=args.loose_slo_ms or None,
            duration_s=args.duration, warmup_s=args.warmup, start_rps=args.start_rps, factor=args.factor,
            max_rps=args.max_rps, refine=args.refine, max_total_s=args.max_total, arrivals=args.arrivals,
            query_files=args.queries or None, allow_remote=args.allow_remote, k=args.k, timeout_s=args.timeout,
        )
        print(folder)
        return 0
    if args.cmd == "floor":
        from loadtest.floor import serve_floor

        serve_floor(args.artifact, port=args.port)
        return 0
    if args.cmd == "promcheck":
        from loadtest.promcheck import RULES_FILE, check_against_prometheus

        res = check_against_prometheus(args.url, args.encoders or ["student", "teacher"], rate=args.rate,
                                       duration_s=args.duration, rules_file=args.rules or RULES_FILE,
                                       allow_remote=args.allow_remote)
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0 if res.agree else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
