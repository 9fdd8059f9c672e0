"""The user's settings: one dataclass, saved as JSON in the data dir, and the prompt presets.

A JSON file (not QSettings) keeps the settings next to the chats they belong to, so a different
`--data-dir` is a fully separate profile. Values that fail validation fall back to their default
with a warning in the log: a hand-edited file must never stop Folio from starting. The file may
hold a remote server's API key, so only its owner can read it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from app import sampling
from app.backends import BackendSpec, LocalSpec, RemoteSpec
from app.paths import settings_path
from engine.memory import parse_size

log = logging.getLogger(__name__)

MODEL_SOURCES = ("bundled", "folder", "gguf", "remote")
LOCAL_FILE_SOURCES = ("folder", "gguf")
DEVICES = ("auto", "cuda", "cpu")
THEMES = ("light", "dark")
KV_CACHE_DTYPES = ("auto", "fp8")            # the model's dtype, or float8 e4m3 (twice the tokens)
QUANTIZATIONS = ("none", "int8", "int4")     # at load, for a Hugging Face folder (a GGUF keeps its own)
DEFAULT_PRESET = "Folio default"


@dataclass(frozen=True)
class Preset:
    name: str
    text: str | None  # None: the document-aware default of rag.context


@dataclass(frozen=True)
class Settings:
    model_source: str = "bundled"
    model_path: str = ""
    remote_url: str = ""              # an OpenAI-compatible server, for model_source "remote"
    remote_key: str = ""              # "": no key
    remote_model: str = ""            # "": the server's first model
    device: str = "auto"
    max_model_len: int = 0            # 0: as long as the model allows
    kv_memory_fraction: float = 0.85  # of a GPU's memory left after the weights; nothing on the CPU
    gpu_memory_limit: str = ""        # "8GiB", "7.5 GB"...: all the engine may take of a GPU; "": no limit
    kv_cache_dtype: str = "auto"
    host_kv_cache: str = ""           # KV kept in RAM, "1GiB"...: blocks pushed off the device; "0": none; "": the default
    disk_kv_cache: str = ""           # KV kept on disk, at most (per model), read through RAM; "0": none; "": the default
    quantization: str = "none"        # for model_source "folder" only
    temperature: float = sampling.TEMPERATURE
    top_p: float = sampling.TOP_P
    max_tokens: int = sampling.MAX_TOKENS
    repetition_penalty: float = sampling.REPETITION_PENALTY
    system_preset: str = DEFAULT_PRESET
    system_prompt: str | None = None  # the preset's text, possibly edited; None: rag's default
    theme: str = "light"

    def problems(self) -> list[str]:
        """What is wrong with these values, in words a user can act on."""
        problems = [message(getattr(self, name)) if callable(message) else message
                    for name, (ok, message) in _CHECKS.items() if not ok(getattr(self, name))]
        if self.model_source in LOCAL_FILE_SOURCES and not self.model_path.strip():
            problems.append("choose a model folder or GGUF file")
        if self.is_remote and not self.remote_url.strip():
            problems.append("enter the remote server's URL")
        if (_kv_tier_problem(self.host_kv_cache) is None and _kv_tier_problem(self.disk_kv_cache) is None
                and _kv_tier_bytes(self.host_kv_cache) == 0 and _kv_tier_bytes(self.disk_kv_cache)):
            problems.append("KV kept on disk needs KV kept in RAM, which blocks read from disk go through: "
                            "give RAM a size, or set the disk to 0 too")
        return problems

    @property
    def is_remote(self) -> bool:
        return self.model_source == "remote"

    def backend_spec(self) -> BackendSpec:
        """Who answers with these settings; the window reloads when this changes. Only what
        changes the engine is part of the choice: the GPU memory limit and the KV memory fraction
        mean nothing on the CPU, the fraction nothing under a limit (the limit sizes the KV pool),
        and quantizing at load applies to a Hugging Face folder only (a GGUF keeps its own types).
        The KV tiers' sizes are left to the defaults (the engine's for RAM, `DISK_KV_CACHE` for the
        disk) unless set; no RAM turns the default disk tier off with it, as it reads through RAM.
        Call it on settings without `problems()`: a bad memory size raises ValueError."""
        if self.is_remote:
            return RemoteSpec(self.remote_url.strip(), self.remote_key.strip() or None,
                              self.remote_model.strip() or None)
        model = self.model_path.strip() if self.model_source in LOCAL_FILE_SOURCES else None
        config: dict = {}
        if self.device != "cpu":
            if self.gpu_memory_limit.strip():
                config["gpu_memory_limit"] = parse_size(self.gpu_memory_limit)  # "8GiB" and "8 GiB" alike
            else:
                config["kv_memory_fraction"] = self.kv_memory_fraction
        if self.max_model_len:
            config["max_model_len"] = self.max_model_len
        if self.kv_cache_dtype != "auto":
            config["kv_cache_dtype"] = self.kv_cache_dtype
        ram, disk = _kv_tier_bytes(self.host_kv_cache), _kv_tier_bytes(self.disk_kv_cache)
        if ram is not None:
            config["host_kv_cache"] = ram
        if disk is not None or ram == 0:
            config["disk_kv_cache"] = disk or 0
        if self.model_source == "folder" and self.quantization != "none":
            config["quantization"] = self.quantization
        return LocalSpec.of(model, self.device, **config)

    def model_label(self) -> str:
        if self.model_source == "bundled":
            return "SmolLM2 (bundled)"
        if self.is_remote:
            url, model = self.remote_url.strip(), self.remote_model.strip()
            netloc = urlsplit(url if "://" in url else f"http://{url}").netloc
            host = netloc.rpartition("@")[2] or url  # never a password written into the URL
            return f"{model or 'default model'}@{host}"
        return Path(self.model_path).name or self.model_path

    def sampling_params(self):
        """The answers' `engine.SamplingParams` (importing them loads no torch)."""
        from engine import SamplingParams
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              repetition_penalty=self.repetition_penalty)


_CHECKS = {
    "model_source": (lambda v: v in MODEL_SOURCES, f"model source must be one of {', '.join(MODEL_SOURCES)}"),
    "device": (lambda v: v in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
    "max_model_len": (lambda v: v >= 0, "context length must be >= 0"),
    "kv_memory_fraction": (lambda v: 0.0 < v <= 1.0, "KV memory fraction must be in (0, 1]"),
    "gpu_memory_limit": (lambda v: _memory_limit_problem(v) is None, lambda v: _memory_limit_problem(v)),
    "host_kv_cache": (lambda v: _kv_tier_problem(v) is None, lambda v: f"KV kept in RAM: {_kv_tier_problem(v)}"),
    "disk_kv_cache": (lambda v: _kv_tier_problem(v) is None, lambda v: f"KV kept on disk: {_kv_tier_problem(v)}"),
    "kv_cache_dtype": (lambda v: v in KV_CACHE_DTYPES,
                       f"KV cache precision must be one of {', '.join(KV_CACHE_DTYPES)}"),
    "quantization": (lambda v: v in QUANTIZATIONS, f"quantization must be one of {', '.join(QUANTIZATIONS)}"),
    "temperature": (lambda v: v >= 0.0, "temperature must be >= 0"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "top-p must be in (0, 1]"),
    "max_tokens": (lambda v: v >= 1, "max tokens must be >= 1"),
    "repetition_penalty": (lambda v: sampling.REPETITION_PENALTY_RANGE[0] <= v <= sampling.REPETITION_PENALTY_RANGE[1],
                           "repetition penalty must be between {:g} and {:g}".format(*sampling.REPETITION_PENALTY_RANGE)),
    "theme": (lambda v: v in THEMES, f"theme must be one of {', '.join(THEMES)}"),
}


def _memory_limit_problem(value: str) -> str | None:
    """None for "" (no limit) or a size like "8GiB"; else what is wrong, in words."""
    if not value.strip():
        return None
    try:
        parse_size(value)
    except ValueError as e:
        return f"GPU memory limit: {e} (leave it empty for no limit)"
    return None


def _kv_tier_bytes(value: str) -> int | None:
    """A KV tier's size in bytes: None for "" (the default), 0 for "0" (none). Raises ValueError."""
    text = value.strip()
    if not text:
        return None
    return 0 if text == "0" else parse_size(text)


def _kv_tier_problem(value: str) -> str | None:
    """None for a size a KV tier can take; else what is wrong, in words."""
    if value.strip().startswith("-"):
        return f"a size cannot be negative, got {value!r} (0 for none, empty for the default)"
    try:
        _kv_tier_bytes(value)
    except ValueError as e:
        return f"{e} (0 for none, empty for the default)"
    return None


def load_settings(data_dir: Path) -> Settings:
    path = settings_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable settings file %s: %s", path, e)
        return Settings()
    if not isinstance(raw, dict):
        log.warning("ignoring settings file %s: not a JSON object", path)
        return Settings()
    defaults = Settings()
    values = {}
    for f in fields(Settings):
        if f.name not in raw:
            continue
        check = _CHECKS.get(f.name, (lambda v: True, ""))[0]
        if _same_type(raw[f.name], getattr(defaults, f.name)) and check(raw[f.name]):
            default = getattr(defaults, f.name)
            values[f.name] = float(raw[f.name]) if isinstance(default, float) else raw[f.name]
        else:
            log.warning("settings: ignoring bad value %s=%r", f.name, raw[f.name])
    settings = replace(defaults, **values)
    if settings.problems():  # e.g. a folder source saved without its path
        log.warning("settings: %s; using the defaults", "; ".join(settings.problems()))
        return defaults
    return settings


def save_settings(data_dir: Path, settings: Settings) -> None:
    path = settings_path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its own permissions
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(settings), indent=2))
    tmp.replace(path)  # atomic: a crash leaves the old file or the new one, never half of one


def load_presets() -> list[Preset]:
    raw = json.loads(resources.files("resources").joinpath("prompts.json").read_text(encoding="utf-8"))
    return [Preset(p["name"], p["text"]) for p in raw["presets"]]


def _same_type(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None:
        return value is None or isinstance(value, str)
    return isinstance(value, type(default)) and not isinstance(value, bool)
