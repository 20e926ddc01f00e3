"""The layer contract of pyproject.toml ([tool.importlinter]) holds: no import crosses it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (it is in the dev extra)"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_no_module_imports_itself_through_others():
    """No import circle anywhere in the tree, lazy imports inside functions included (grimp,
    import-linter's own graph). One ran service.main -> service.api.routes_admin ->
    service.workers -> service.server -> service.main (issue #28); a circle makes import order
    matter and keeps layers from being layers."""
    import grimp

    graph = grimp.build_graph("artifact", "retrieval", "models", "service", "loadtest", "benchmarks", "hlm", cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                circles.append(" -> ".join((module, *back)))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles))[:10])
