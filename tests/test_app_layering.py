"""The layering of DESIGN.md holds: only app/gui imports Qt, nothing but the `folio` entry point
imports app.gui, and the command line, the server and the backends load without Qt (and, for
`import app.backends`, without torch)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT = ("PySide6", "shiboken6")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def product_files() -> list[Path]:
    return [p for pkg in ("app", "engine", "kernels", "rag") for p in (ROOT / pkg).rglob("*.py")]


def test_only_app_gui_imports_qt():
    gui = ROOT / "app" / "gui"
    offenders = [str(p.relative_to(ROOT)) for p in product_files()
                 if gui not in p.parents and any(m.split(".")[0] in QT for m in imported_modules(p))]
    assert not offenders


def test_nothing_but_the_entry_point_imports_the_gui():
    gui = ROOT / "app" / "gui"
    importers = {str(p.relative_to(ROOT)) for p in product_files()
                 if gui not in p.parents and any(m == "app.gui" or m.startswith("app.gui.") for m in imported_modules(p))}
    assert importers == {"app/cli/main.py"}


def test_the_cli_the_server_and_the_backends_load_without_qt():
    code = ("import sys\n"
            "import app.backends\n"
            "assert 'torch' not in sys.modules, 'import app.backends loaded torch'\n"
            "import app.cli.main, app.cli.chat, app.cli.documents, app.cli.self_test\n"
            "import app.server.command, app.server.api, app.server.schema\n"
            "import app.backends.local, app.backends.remote\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
