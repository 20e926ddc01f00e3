"""Student against teacher (and any other encoder) in one run, into one run folder.

The steps alternate between encoders (see ``sweep``), the generator is pinned away from the
server's cores, and the run folder ``runs/loadtest-<UTC timestamp>/`` gets:

- ``results.json``  every step (client and server numbers, HdrHistograms), verdicts, summary
- ``report.md``     summary, ratios, notes, every step in run order
- ``latency_vs_load.png``, ``latency_hist.png``
- ``progress.log``  one line per step as it ran (and ``server.log`` if we started the server)
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import httpx

from loadtest import plots, report
from loadtest.cpus import cpu_model_name, free_port, launch_server, pinned, plan_cpus
from loadtest.queries import load_queries
from loadtest.runner import EncoderSpec, StepResult
from loadtest.sweep import DEFAULT_LOOSE_SLO_MS, DEFAULT_SLO_MS, sweep_many
from loadtest.targets import DEFAULT_URL, check_target, endpoint

DEFAULT_RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"


def new_run_dir(root: Path | str | None = None, prefix: str = "loadtest") -> Path:
    root = Path(root) if root else DEFAULT_RUNS_DIR
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{prefix}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{prefix}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def machine_description() -> str:
    cpu = cpu_model_name() or platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _server_info(base: str) -> dict | None:
    """The service's /v1/info (manifest summary), best effort, for the record."""
    try:
        r = httpx.get(endpoint(base, "/v1/info"), timeout=5.0)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def compare(
    url: str | None = DEFAULT_URL,
    *,
    encoders: Sequence["str | EncoderSpec"] = ("student", "teacher"),
    out_dir: Path | str | None = None,
    runs_root: Path | str | None = None,
    server_cmd: Sequence[str] | str | None = None,
    server_cpus: Sequence[int] | None = None,
    generator_cpus: Sequence[int] | None = None,
    pin: bool = True,
    slo_ms: float = DEFAULT_SLO_MS,
    loose_slo_ms: float | None = DEFAULT_LOOSE_SLO_MS,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    start_rps: float = 5.0,
    factor: float = 2.0,
    max_rps: float = 4000.0,
    refine: int = 2,
    max_total_s: float = 1800.0,
    arrivals: str = "constant",
    query_files: Sequence[Path | str] | None = None,
    allow_remote: bool = False,
    progress: Callable[[str], None] | None = print,
    **step_kwargs,
) -> Path:
    """Run the alternating sweep over ``encoders`` and write the run folder; return its path.

    ``server_cmd``: optionally start the service ourselves (pinned to ``server_cpus``,
    default all cores but the generator's); a ``{port}`` in it is replaced by a free port and
    then ``url`` may be None. ``encoders``: names, or ``label={json body}`` specs such as
    ``student-int8={"encoder":"student","precision":"int8"}`` if the server exposes one.
    """
    plan = plan_cpus()
    gen_cpus = list(generator_cpus) if generator_cpus else (plan.generator if pin and plan.pinned else None)
    srv_cpus = list(server_cpus) if server_cpus else (plan.server if pin and plan.pinned else None)
    cpu_note = (f"server {'pinned to CPU ' + ','.join(map(str, srv_cpus)) if srv_cpus and server_cmd else 'started by the user' if not server_cmd else 'not pinned'}; "
                f"generator {'pinned to CPU ' + ','.join(map(str, gen_cpus)) if gen_cpus else 'not pinned'}")
    if not server_cmd and gen_cpus:
        cpu_note += (f" (start the server with `taskset -c {','.join(map(str, plan.server))} ...` "
                     "to keep it off the generator's core)")

    run_dir = Path(out_dir) if out_dir else new_run_dir(runs_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = (run_dir / "progress.log").open("a")

    def say(msg: str) -> None:
        log_file.write(msg + "\n")
        log_file.flush()
        if progress:
            progress(msg)

    specs = [dataclasses.replace(EncoderSpec.of(e)) for e in encoders]  # copies: urls get filled in
    slos = sorted({slo_ms} | ({loose_slo_ms} if loose_slo_ms else set()))
    with ExitStack() as outer:
        outer.callback(log_file.close)
        meta, sweeps = _run(url, specs, slos, run_dir, say, server_cmd=server_cmd, srv_cpus=srv_cpus,
                            gen_cpus=gen_cpus, cpu_note=cpu_note, slo_ms=slo_ms, loose_slo_ms=loose_slo_ms,
                            duration_s=duration_s, warmup_s=warmup_s, start_rps=start_rps, factor=factor,
                            max_rps=max_rps, refine=refine, max_total_s=max_total_s, arrivals=arrivals,
                            query_files=query_files, allow_remote=allow_remote, step_kwargs=step_kwargs)
        return write_run(run_dir, meta, sweeps, say)


def _run(url, specs, slos, run_dir, say, *, server_cmd, srv_cpus, gen_cpus, cpu_note, slo_ms, loose_slo_ms,
         duration_s, warmup_s, start_rps, factor, max_rps, refine, max_total_s, arrivals, query_files,
         allow_remote, step_kwargs):
    """Start the server if asked, pin the generator, run the sweeps; stop the server after."""
    with ExitStack() as stack:
        if server_cmd:
            base = _start_servers(stack, server_cmd, url, specs, srv_cpus, run_dir, say)
        else:
            base = check_target(url or DEFAULT_URL, allow_remote=allow_remote)
        stack.enter_context(pinned(gen_cpus))
        queries = load_queries(query_files)
        meta = {
            "url": base,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "encoders": [{"label": s.label, "body": s.body, "metric_encoder": s.metric_label,
                          "url": s.url or base, "server_env": s.env} for s in specs],
            "mode": f"open loop, {arrivals} arrivals",
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "slos_ms": slos,
            "search": {"start_rps": start_rps, "factor": factor, "max_rps": max_rps, "refine": refine},
            "cpus": {"server": srv_cpus, "generator": gen_cpus, "note": cpu_note},
            "machine": machine_description(),
            "queries": {"count": len(queries), "files": [str(p) for p in query_files] if query_files else "default"},
            "server_cmd": server_cmd if isinstance(server_cmd, str) or server_cmd is None else shlex.join(server_cmd),
            "server_info": {u: _server_info(u) for u in dict.fromkeys([s.url or base for s in specs])},
        }
        say(f"run folder {run_dir}; {cpu_note}")

        def on_step(step: StepResult, verdicts: dict) -> None:
            srv = step.server or {}
            say(f"{step.encoder:>10} {step.offered_rps:8.1f}/s  achieved {step.achieved_rps:8.1f}/s  "
                f"p50 {step.latency.get('p50') or 0:8.2f}  p99 {step.latency.get('p99') or 0:8.2f} ms  "
                f"server p99 {srv.get('p99') or 0:7.2f} ms  errors {step.error_count}  "
                + "  ".join(f"@{k}ms:" + ("ok" if v["sustained"] else f"FAIL ({v['reason']})")
                            for k, v in verdicts.items()))

        t0 = time.monotonic()
        sweeps = sweep_many(base, specs, slo_ms=slo_ms, loose_slo_ms=loose_slo_ms, start_rps=start_rps,
                            factor=factor, max_rps=max_rps, refine=refine, duration_s=duration_s,
                            warmup_s=warmup_s, max_total_s=max_total_s, queries=queries, on_step=on_step,
                            arrivals=arrivals, allow_remote=allow_remote, **step_kwargs)
        meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    return meta, sweeps


def _start_servers(stack: ExitStack, server_cmd, url: str | None, specs: list[EncoderSpec], cpus,
                   run_dir: Path, say: Callable[[str], None]) -> str:
    """Start one server per distinct ``spec.env`` (usually just one); return the main URL.

    A ``{port}`` in the command is replaced by a free port (required when more than one
    server is started); otherwise the port of ``url`` is the server's own business. Specs
    with an explicit ``url`` talk to a server the user started and are left alone.
    """
    template = shlex.split(server_cmd) if isinstance(server_cmd, str) else list(server_cmd)
    has_port = any("{port}" in c for c in template)
    groups: dict[tuple, list[EncoderSpec]] = {}
    for spec in specs:
        if spec.url is None:
            groups.setdefault(tuple(sorted(spec.env.items())), []).append(spec)
    if len(groups) > 1 and not has_port:
        raise ValueError("several server variants need '{port}' in the server command")
    if url is None and not has_port:
        raise ValueError("put '{port}' in the server command, or give the URL it will listen on")
    main_url = None
    for n, (env_items, members) in enumerate(groups.items() or [((), [])]):
        if has_port or url is None:
            port = free_port()
            cmd = [c.replace("{port}", str(port)) for c in template]
            base = f"http://127.0.0.1:{port}"
        else:
            cmd, base = template, url
        base = check_target(base, allow_remote=False)  # a server we start is always local
        env = dict(env_items)
        say(f"starting server: {' '.join(f'{k}={v}' for k, v in env.items())} {shlex.join(cmd)} "
            f"(CPUs {','.join(map(str, cpus)) if cpus else 'all'})")
        stack.enter_context(launch_server(cmd, ready_url=endpoint(base, "/readyz"), cpus=cpus, env=env,
                                          log_path=run_dir / ("server.log" if n == 0 else f"server-{n}.log")))
        if len(groups) > 1:
            for spec in members:
                spec.url = base
        main_url = main_url or base
    return main_url


def write_run(run_dir: Path, meta: dict, sweeps, say: Callable[[str], None] | None = None) -> Path:
    """results.json, report.md and the plots for finished sweeps."""
    slos = meta["slos_ms"]
    summary = report.summarize(sweeps, slos)
    report.write_json(run_dir / "results.json", meta, sweeps, summary)
    (run_dir / "report.md").write_text(report.markdown(meta, sweeps, summary))
    plots.plot_latency_vs_load(sweeps, slos, run_dir / "latency_vs_load.png",
                               title=f"Latency against offered load ({meta['mode']})")
    rates = summary["comparison_rates"]
    plots.plot_histograms(sweeps, rates.get("loaded") or rates.get("light"), run_dir / "latency_hist.png")
    if say:
        say(f"wrote {run_dir}/report.md")
    return run_dir
