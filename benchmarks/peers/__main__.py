"""``python -m benchmarks.peers serve|export``: start one peer (or our service) on a port.

One command template starts every variant, so ``compare`` can run them side by side and
alternate; the peer is picked by ``--peer`` or, when absent, by ``HLM_BENCH_PEER``
(``ours``, ``st``, ``infinity``), which an encoder spec sets per server::

    python -m loadtest compare \\
      --server-cmd "python -m benchmarks.peers serve --artifact artifacts/demo --port {port}" \\
      --encoder 'ours-int8={"encoder":"student","@env":{"HLM_BENCH_PEER":"ours","HLM_STUDENT_PRECISION":"int8"}}' \\
      --encoder 'st-torch={"encoder":"student","@env":{"HLM_BENCH_PEER":"st"}}' \\
      --encoder 'infinity={"encoder":"student","@env":{"HLM_BENCH_PEER":"infinity"}}'

``export`` writes the student as a sentence-transformers folder (what infinity-emb loads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PEERS = ("ours", "st", "infinity")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve one variant on --port")
    s.add_argument("--peer", choices=PEERS, default=None, help="default: $HLM_BENCH_PEER, else ours")
    s.add_argument("--artifact", type=Path, default=Path("artifacts/demo"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    e = sub.add_parser("export", help="write the artifact's student as a sentence-transformers folder")
    e.add_argument("--artifact", type=Path, default=Path("artifacts/demo"))
    e.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    if args.cmd == "export":
        from benchmarks.peers.st_student import save_st_student

        print(save_st_student(args.artifact, args.out))
        return 0
    peer = args.peer or os.environ.get("HLM_BENCH_PEER") or "ours"
    if peer not in PEERS:
        ap.error(f"unknown peer {peer!r} (HLM_BENCH_PEER); one of {', '.join(PEERS)}")
    if peer == "ours":
        hlm = shutil.which("hlm") or str(Path(sys.executable).with_name("hlm"))
        cmd = [hlm, "serve", "--artifact", str(args.artifact), "--host", args.host, "--port", str(args.port)]
        os.execv(cmd[0], cmd)  # the same process: compare's SIGTERM reaches the server itself
    if peer == "st":
        from benchmarks.peers.st_app import main as st_main

        st_main(["--artifact", str(args.artifact), "--host", args.host, "--port", str(args.port)])
        return 0
    from benchmarks.peers.infinity_front import serve

    serve(args.artifact, args.port, host=args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
