"""Print the serving requirements of the project, one per line, for the image build.

They are the base dependencies plus the ``serve`` extra of ``pyproject.toml`` (extras that
refer back to the project itself are expanded), so pyproject.toml stays the one source of
truth. ``--onnxruntime onnxruntime-gpu`` swaps the ONNX Runtime package for the GPU build:
the two must never be installed side by side, they share the ``onnxruntime`` module. A
version may come with it (``onnxruntime-gpu<1.24``, e.g. to match a CUDA 12 base image);
without one the pyproject's bound is kept.

    python3 docker/requirements.py pyproject.toml [--extra "serve milvus"] [--onnxruntime onnxruntime-gpu]

Standard library only (Python 3.11+ for tomllib).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serving_requirements(pyproject: dict, extras: list[str], onnxruntime: str) -> list[str]:
    project = pyproject["project"]
    own_name = _canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(requirement: str) -> None:
        match = _NAME.match(requirement)
        if match is None:
            raise SystemExit(f"requirements.py: cannot parse requirement {requirement!r}")
        name = _canonical(match.group(1))
        if name == own_name:  # "hlm-retrieval[serve]" inside another extra
            for extra in (match.group(2) or "[]")[1:-1].split(","):
                expand(extra.strip())
            return
        if name == "onnxruntime":
            wanted = _NAME.match(onnxruntime)
            if wanted is None or _canonical(wanted.group(1)) not in ("onnxruntime", "onnxruntime-gpu"):
                raise SystemExit(f"requirements.py: {onnxruntime!r} is not onnxruntime or onnxruntime-gpu")
            if onnxruntime[wanted.end():].strip():  # a version of its own
                requirement = onnxruntime.strip()
            else:
                requirement = wanted.group(1) + requirement[match.end(1):]
        if requirement not in out:
            out.append(requirement)

    def expand(extra: str) -> None:
        if not extra or extra in seen_extras:
            return
        if extra not in optional:
            raise SystemExit(f"requirements.py: pyproject.toml has no extra {extra!r}")
        seen_extras.add(extra)
        for requirement in optional[extra]:
            add(requirement)

    for requirement in project.get("dependencies", []):
        add(requirement)
    for extra in extras:
        expand(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml")
    parser.add_argument("--extra", action="append", default=None,
                        help="extra(s) to include, repeated or space/comma separated (default: serve)")
    parser.add_argument(
        "--onnxruntime",
        default="onnxruntime",
        help="ONNX Runtime package (onnxruntime or onnxruntime-gpu, optionally with a version) in place of onnxruntime",
    )
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as fh:
        pyproject = tomllib.load(fh)
    extras = [name for arg in args.extra or ["serve"] for name in re.split(r"[\s,]+", arg) if name]
    for requirement in serving_requirements(pyproject, extras, args.onnxruntime):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
