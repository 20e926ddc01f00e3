"""Open-loop load-test harness for the HLM keyword retrieval service.

Modules, one job each:

- ``targets``       which URLs may receive load (loopback unless the user says otherwise)
- ``queries``       real queries to replay, read from the shared data folder or a user file
- ``schedule``      precomputed send times (constant or Poisson arrivals)
- ``latency``       HdrHistogram recording and the percentile summary
- ``servermetrics`` the server's own view: /metrics histogram deltas and Prometheus' quantile
- ``runner``        one load step (open loop by default, closed loop on request) -> StepResult
- ``search``        which rates to try next, and whether a step met its SLO
- ``sweep``         raise the rate step by step per encoder, alternating between encoders
- ``compare``       student against teacher in one run, written to a run folder
- ``report``        results.json and report.md (tables with ratios)
- ``plots``         PNG plots (matplotlib, Agg backend)
- ``cpus``          pinning the generator and the server to different cores; launching a server
- ``promcheck``     a real Prometheus, to check our delta maths against histogram_quantile

The project CLI (``hlm loadtest ...``) calls the plain functions; ``python -m loadtest``
exposes the same functions on its own.
"""

from __future__ import annotations

__all__ = ["run_step", "sweep", "compare", "StepResult"]


def __getattr__(name: str):  # lazy: importing the package must not pull aiohttp/matplotlib
    if name in ("run_step", "StepResult"):
        from loadtest import runner

        return getattr(runner, name)
    if name == "sweep":
        from loadtest.sweep import sweep

        return sweep
    if name == "compare":
        from loadtest.compare import compare

        return compare
    raise AttributeError(name)
