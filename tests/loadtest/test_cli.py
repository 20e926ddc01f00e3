"""``python -m loadtest`` as a user runs it, in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_run_prints_and_writes_a_step(quick_service, tmp_path):
    out = tmp_path / "step.json"
    p = _cli("run", "--url", quick_service, "--rate", "20", "--duration", "0.5", "--warmup", "0",
             "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "open-constant" in p.stdout and "p99" in p.stdout and "server:" in p.stdout
    step = json.loads(out.read_text())
    assert step["sent"] == 10 and step["encoder"] == "student"


def test_sweep_writes_a_run_folder(quick_service, tmp_path):
    folder = tmp_path / "run"
    p = _cli("sweep", "--url", quick_service, "--start-rps", "20", "--max-rps", "20", "--duration", "0.5",
             "--warmup", "0", "--refine", "0", "--out", str(folder))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(folder)
    assert (folder / "report.md").is_file()


def test_remote_targets_are_refused():
    p = _cli("run", "--url", "http://192.0.2.1:8000", "--rate", "1", "--duration", "1")
    assert p.returncode != 0 and "loopback" in p.stderr
