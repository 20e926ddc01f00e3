"""`hlm`: one entry point, a subcommand per step (build, serve, eval, loadtest, ...).

Imports happen inside each command so the serving environment, which has no torch,
can run `hlm serve` and `hlm verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def build(
    profile: str = typer.Option("demo", help="demo (default, ~15 min), full (all sample data), small (tests)."),
    out: Optional[Path] = typer.Option(None, help="Artifact folder; default artifacts/<profile>."),
    data_dir: Optional[Path] = typer.Option(None, envvar="HLM_DATA_DIR", help="Sample data folder."),
    student_checkpoint: Optional[Path] = typer.Option(None, help="A trained student from `hlm distill` (default: closed-form fit)."),
    threads: int = typer.Option(2, help="CPU threads for encoding and index build."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing if a verified artifact is already there."),
) -> None:
    """Build a verified artifact: teacher index, student and teacher ONNX, manifest."""
    from models.data import DataError
    from models.manifest import ArtifactError, verify
    from models.profiles import get_profile

    out = out or Path("artifacts") / profile
    if if_missing:
        try:
            verify(out)
            typer.echo(f"{out} is already a verified artifact; nothing to build.")
            return
        except ArtifactError:
            pass
    from models.build import build as run_build

    try:
        run_build(get_profile(profile), out, data_dir, student_checkpoint, threads)
    except (DataError, ArtifactError, ValueError) as exc:
        typer.echo(f"hlm build: {exc}", err=True)
        raise typer.Exit(2)


@app.command("verify")
def verify_cmd(artifact: Path = typer.Argument(Path("artifacts/demo"))) -> None:
    """Check an artifact folder against its manifest (files, checksums, dimensions)."""
    from models.manifest import ArtifactError, verify

    try:
        manifest = verify(artifact)
    except ArtifactError as exc:
        typer.echo(f"hlm verify: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{artifact}: verified ({len(manifest['files'])} files, sha256 {manifest['artifact_sha256'][:12]}…)")


if __name__ == "__main__":
    app()
