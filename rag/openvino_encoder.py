"""The bundled embedder compiled for the CPU by OpenVINO: issue 14's faster indexing.

On the same CPU and documents, indexing with OpenVINO runs 3-6x faster than issue 4's torch path
and 2.7-3.2x the torch bf16 path (`python -m rag.eval --speed`; BENCHMARKS.md, issue 14), in bf16
where the CPU has it natively and in fp32 elsewhere, as the torch path chooses. Nothing is
downloaded: the model is converted once from the bundled weights (torch -> OpenVINO IR, offline,
a few seconds) and kept under Folio's cache folder, keyed by a checksum of the weights and the
OpenVINO version. A cache entry is used only when its files match the checksums in its manifest,
so one cut short or damaged is rebuilt, not loaded. Tokenization and mean pooling are
sentence-transformers' own (the same tokenizer file, truncation and padding), so vectors match
the torch path's.

OpenVINO reports usage to Intel when it is imported and on each conversion unless the user has
opted out (no consent file counts as consent). Folio sends nothing anywhere, so OpenVINO is only
ever imported through `import_openvino`, which turns that off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.batch_tokenizer import BatchTokenizer
from rag.checksums import file_sha256

log = logging.getLogger(__name__)

CACHE_FORMAT = 1            # bump when what is saved (or how) changes: older entries are then not used
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_FROM_HINT = {"f32": "fp32", "bf16": "bf16"}
_PROBE = ("Where is the spare key for the shed kept?",
          "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin of oil.")
_MAX_PROBE_GAP = 1e-4       # converted fp32 against torch fp32: 1 - cosine, on the probe texts


class CacheInvalid(Exception):
    """A cache entry that must not be loaded (incomplete, damaged, or of another format)."""


def import_openvino():
    """`import openvino` without its usage reports: with `openvino_telemetry` unimportable,
    OpenVINO uses the stub it ships for machines without that package, which sends nothing.
    (Where something imported OpenVINO before Folio did, its reports are that program's.)"""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino
    return openvino


def cache_root() -> Path:
    """Where converted models live: `embedder/` in Folio's cache folder (`FOLIO_CACHE_DIR`
    overrides it, as for the engine's caches; rag keeps its own copy of that rule so that it
    imports nothing from the engine)."""
    env = os.environ.get("FOLIO_CACHE_DIR")
    if env:
        return Path(env) / "embedder"
    import platformdirs
    return Path(platformdirs.user_cache_dir("folio", appauthor=False)) / "embedder"


def unsupported_reason(model_path: str) -> str | None:
    """Why this model folder cannot run here (OpenVINO missing, not a mean-pooled BERT-style
    sentence-transformers model), or None when it can."""
    try:
        import_openvino()
    except ImportError:
        return "OpenVINO is not installed"
    try:
        modules = json.loads(Path(model_path, "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads(Path(model_path, modules[1]["path"], "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, IndexError) as e:
        return f"the model's module list cannot be read ({e})"
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return f"the model's modules are {', '.join(kinds)}, not Transformer, Pooling[, Normalize]"
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    if modes != {"pooling_mode_mean_tokens"}:
        return f"the model pools by {', '.join(sorted(modes)) or 'nothing'}, not by the mean"
    return None


class OpenVINOEncoder:
    """Mean-pooled (not normalised) float32 sentence vectors of a sentence-transformers folder,
    on OpenVINO's CPU plugin. Not thread-safe: the Embedder's lock serialises calls."""

    def __init__(self, model_path: str, precision: str, cache_dir: Path | None = None) -> None:
        if precision not in _HINTS:
            raise ValueError(f"OpenVINO runs fp32 or bf16 here, not {precision!r}")
        ov = import_openvino()
        self.model_path = model_path
        self.tokenize = BatchTokenizer(model_path)  # (input ids, attention mask) as sentence-transformers makes them
        self.max_seq_length = self.tokenize.max_length
        self.folder = (cache_dir or cache_root()) / fingerprint(model_path)[:24]
        self.converted = False   # whether this instance had to convert (no usable cache entry)
        core = ov.Core()
        try:
            model = core.read_model(str(_verified_xml(self.folder)))
        except CacheInvalid as why:
            if self.folder.exists():
                log.warning("the converted embedder in %s is unusable (%s): converting it again", self.folder, why)
            model = self._convert(core)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _HINTS[precision],
                                                     "PERFORMANCE_HINT": "LATENCY"})
        self.precision = _FROM_HINT.get(str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower(), precision)
        self._request = compiled.create_infer_request()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]: the mean of each text's token vectors, padding excluded."""
        ids, mask = self.tokenize(texts)
        hidden = next(iter(self._request.infer({"input_ids": ids, "attention_mask": mask}).values()))
        return _mean_pool(hidden, mask)

    # ------------------------------------------------------------------ conversion

    def _convert(self, core):
        """The model converted from its torch weights, checked against torch on probe texts, then
        saved for the next process (best effort: an unwritable cache only costs the next start)."""
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # as the torch path does: a "Loading weights" bar is noise
        log.info("preparing the embedder for this CPU (once; cached in %s)...", self.folder)
        started = time.perf_counter()
        torch_model = AutoModel.from_pretrained(self.model_path, local_files_only=True, dtype=torch.float32).eval()
        wrapped = _last_hidden_state(torch_model)
        ids, mask = (torch.from_numpy(a) for a in self.tokenize(_PROBE))
        with torch.inference_mode():
            expected = wrapped(ids, mask).numpy()
        ov = import_openvino()
        with warnings.catch_warnings():  # the tracer's notes on shape checks that hold for every input here
            warnings.simplefilter("ignore")
            model = ov.convert_model(wrapped, example_input={"input_ids": ids, "attention_mask": mask},
                                     input=[("input_ids", [-1, -1], ov.Type.i64),
                                            ("attention_mask", [-1, -1], ov.Type.i64)])
        got = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer(
            {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        gap = 1 - _min_cosine(next(iter(got.values())), expected, mask.numpy())
        if gap > _MAX_PROBE_GAP:
            raise RuntimeError(f"the converted model disagrees with torch (1 - cosine = {gap:.2e})")
        self.converted = True
        try:
            _save(model, self.folder)
        except OSError as e:
            log.warning("cannot keep the converted embedder in %s (%s): it will be converted again next time",
                        self.folder, e.strerror or e)
        log.info("embedder prepared in %.1f s", time.perf_counter() - started)
        return model


def _last_hidden_state(model):
    """The transformer as the converter wants it: tensors in by name, one tensor out (a class
    made here, so that importing this module needs no torch)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState()


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 [n, dim]: the mean of each text's token vectors, padding excluded."""
    weights = mask[:, :, None].astype(np.float32)
    return (hidden.astype(np.float32) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _min_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = _mean_pool(a, mask), _mean_pool(b, mask)
    return float(((x * y).sum(axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min())


def fingerprint(model_path: str) -> str:
    """What a converted model depends on: the weights and config, the OpenVINO version, the cache format."""
    h = hashlib.sha256(f"format {CACHE_FORMAT}\nopenvino {import_openvino().__version__}\n".encode())
    for name in ("config.json", "model.safetensors"):
        h.update(name.encode() + b"\0" + file_sha256(Path(model_path, name)).encode() + b"\n")
    return h.hexdigest()


_FILES = ("model.xml", "model.bin")


def _verified_xml(folder: Path) -> Path:
    """The entry's model.xml when the manifest, written last, names this format and every file's checksum."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            raise CacheInvalid(f"format {manifest.get('format')!r}, not {CACHE_FORMAT}")
        for name in _FILES:
            if file_sha256(folder / name) != manifest["sha256"][name]:
                raise CacheInvalid(f"{name} does not match its checksum")
    except FileNotFoundError as e:
        raise CacheInvalid(f"{Path(e.filename).name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheInvalid(f"its manifest cannot be read ({type(e).__name__})") from None
    return folder / "model.xml"


def _save(model, folder: Path) -> None:
    """Written into a fresh folder beside `folder` and renamed into place, so a reader never sees
    half an entry; a damaged entry already there is replaced."""
    ov = import_openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        ov.save_model(model, str(work / "model.xml"), compress_to_fp16=False)
        manifest = {"format": CACHE_FORMAT, "sha256": {name: file_sha256(work / name) for name in _FILES}}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(work, folder)
        except OSError:
            if not folder.is_dir():  # else another process put its (equal) entry there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
