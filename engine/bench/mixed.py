"""Folio's engine against the transformers `generate` baseline on one mixed workload, in one run
(`python -m engine.bench --suite mixed`).

Workload (fixed `--seed`, all lengths uniform): 32 requests with 32-1024 prompt tokens and 16-256
output tokens, plus 8 requests made of one shared 1024-token prefix and a distinct 16-64-token
suffix (outputs 16-256), shuffled into one arrival order. `--scale` multiplies every count and
length (at least 2 shared-prefix requests). Prompts are windows of a tokenized, procedurally
written English text (random numbers in every sentence keep unrelated windows from sharing a
first KV block). Every output is forced to its length L: greedy with EOS ignored (ours), greedy
with `min_new_tokens = max_new_tokens` (transformers). Both run a short warm-up first.

Definitions:
- Throughput: useful generated tokens / wall seconds from submitting the first request to the
  end of the last. A static batch runs until its longest member is done; only each request's own
  L counts, the rest is waste. "total tok/s" also counts the prompt tokens.
- Ours: every request added to one `LLMEngine` at once, then stepped until all are done.
- Transformers: `AutoModelForCausalLM` from the folder our engine loaded, same dtype and device,
  sdpa attention, static batches of `--hf-batch` requests in arrival order, left-padded,
  `generate(max_new_tokens = min_new_tokens = longest L of the batch, do_sample=False)`.
- TTFT (mixed run): every request arrives at t=0; TTFT runs until its first token (for the
  baseline, until the first generation step of its batch ends).
- Cold vs shared-prefix TTFT: on a fresh engine (warmed up on an unrelated prompt), one
  shared-prefix request runs alone (cold); then each other shared-prefix request runs alone, one
  after the other, so batching does not blur the numbers. Shared = their median. These runs stop
  after 8 tokens: only the first one is measured.
- KV slot utilization = (integral of holding dt) / (integral of reserved dt), with the state after
  each step weighted by that step's duration.
  Ours: reserved = blocks with ref_cnt > 0 times block_size (free blocks that still cache a
  prefix are reclaimable and not reserved); holding = distinct physical slots holding a computed
  token of a live sequence: a block shared by several sequences counts once, and slots allocated
  for tokens not computed yet count as reserved, not holding.
  Transformers: each static batch reserves batch size x (longest prompt + max new tokens), a
  contiguous cache preallocated for the padded length; after generation step j (j = 1..max new)
  request i holds P_i + min(j, L_i) - 1 tokens: its prompt and the generated tokens whose KV it
  needs, as in ours (the newest token's KV is written by the next step). Left padding and tokens
  generated past a request's own L are reserved but not holding.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from engine.bench.report import mark
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

TARGET_SPEEDUP = {"cpu": 3.0, "cuda": 25.0}  # throughput over transformers, by device type
TARGET_TTFT_RATIO = 1 / 20
TARGET_KV_UTILIZATION = 0.97

# ---------------------------------------------------------------------------------- workload

_SUBJECTS = ["the engineer", "a quiet librarian", "our survey team", "the old captain", "every student",
             "the committee", "a young farmer", "the river pilot", "my neighbour", "the new manager"]
_VERBS = ["reviewed", "carried", "described", "repaired", "counted", "painted", "measured", "sold",
          "copied", "explained"]
_ADJECTIVES = ["blue", "heavy", "forgotten", "careful", "narrow", "bright", "second-hand", "unusual"]
_OBJECTS = ["lanterns", "maps of the harbour", "letters", "broken clocks", "wooden boxes", "recipes",
            "survey reports", "bridges", "train tickets", "seed samples"]
_PLACES = ["before dawn", "in the northern valley", "after the storm", "near the station",
           "during the long winter", "at the market", "behind the mill", "on the third floor"]
_LINKS = ["Later,", "Meanwhile,", "Even so,", "In the end,", "By then,", "Still,"]


@dataclass(frozen=True)
class BenchRequest:
    prompt: list[int]
    max_tokens: int
    shared_prefix: bool


@dataclass
class Workload:
    requests: list[BenchRequest]  # in arrival order
    prefix_len: int
    warmup: BenchRequest  # shares no KV block with the requests

    @property
    def shared(self) -> list[BenchRequest]:
        return [r for r in self.requests if r.shared_prefix]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.max_tokens for r in self.requests)


def english_text(rng: random.Random, num_sentences: int) -> str:
    """Plain English prose, so prompts look like text to the tokenizer and the model."""
    paragraphs, sentences = [], []
    for _ in range(num_sentences):
        s = (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.randint(2, 9999)} "
             f"{rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}.")
        if rng.random() < 0.3:
            s = f"{rng.choice(_LINKS)} {s}"
        sentences.append(s[0].upper() + s[1:])
        if len(sentences) == 6:
            paragraphs.append(" ".join(sentences))
            sentences = []
    paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def token_stream(tokenizer, rng: random.Random, min_tokens: int) -> list[int]:
    """Token ids of enough English text, without special tokens."""
    ids: list[int] = []
    while len(ids) < min_tokens:
        ids += tokenizer.encode(english_text(rng, 200) + "\n\n", add_special_tokens=False)
    return ids


def make_workload(tokenizer, seed: int, scale: float) -> Workload:
    rng = random.Random(seed)

    def scaled(n: int) -> int:
        return max(1, round(n * scale))

    stream = token_stream(tokenizer, rng, 16 * scaled(1024) + 4096)

    def window(n: int) -> list[int]:
        start = rng.randrange(len(stream) - n + 1)
        return stream[start:start + n]

    def output_len() -> int:
        return rng.randint(scaled(16), scaled(256))

    mixed = [BenchRequest(window(rng.randint(scaled(32), scaled(1024))), output_len(), False)
             for _ in range(scaled(32))]
    prefix = window(scaled(1024))
    shared = [BenchRequest(prefix + window(rng.randint(scaled(16), scaled(64))), output_len(), True)
              for _ in range(max(2, scaled(8)))]
    requests = mixed + shared
    rng.shuffle(requests)
    warmup = BenchRequest(window(len(prefix) + scaled(32)), 4, False)
    return Workload(requests, len(prefix), warmup)


def forced_length(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

# ---------------------------------------------------------------------------------- results


@dataclass
class SlotTime:
    """Slot-seconds holding tokens and slot-seconds reserved, summed over a run."""

    holding: float = 0.0
    reserved: float = 0.0

    def add(self, holding: int, reserved: int, seconds: float) -> None:
        self.holding += holding * seconds
        self.reserved += reserved * seconds

    @property
    def utilization(self) -> float:
        return self.holding / self.reserved if self.reserved else 0.0


@dataclass
class RunResult:
    name: str
    elapsed_s: float
    generated_tokens: int
    prompt_tokens: int
    kv_utilization: float
    ttft_s: list[float]
    preemptions: int = 0

    @property
    def generated_per_s(self) -> float:
        return self.generated_tokens / self.elapsed_s

    @property
    def total_per_s(self) -> float:
        return (self.generated_tokens + self.prompt_tokens) / self.elapsed_s

    @property
    def median_ttft_s(self) -> float:
        return statistics.median(self.ttft_s)

    def summary(self) -> dict:
        return {**asdict(self), "generated_per_s": self.generated_per_s, "total_per_s": self.total_per_s,
                "median_ttft_s": self.median_ttft_s}


@dataclass
class PrefixTTFT:
    prefix_len: int
    cold_ttft_s: float
    cold_cached_tokens: int
    shared_ttft_s: list[float]
    shared_cached_tokens: list[int]

    @property
    def shared_median_s(self) -> float:
        return statistics.median(self.shared_ttft_s)

    @property
    def ratio(self) -> float:
        return self.shared_median_s / self.cold_ttft_s

    def summary(self) -> dict:
        return {**asdict(self), "shared_median_s": self.shared_median_s, "ratio": self.ratio}


@dataclass
class Report:
    device: str
    model_path: str
    seed: int
    scale: float
    hf_batch: int
    num_requests: int
    num_shared: int
    prompt_tokens: int
    output_tokens: int
    ours: RunResult
    baseline: RunResult | None
    prefix: PrefixTTFT

    @property
    def speedup(self) -> float | None:
        return self.ours.generated_per_s / self.baseline.generated_per_s if self.baseline else None

    def summary(self) -> dict:
        head = {k: v for k, v in asdict(self).items() if k not in ("ours", "baseline", "prefix")}
        return {
            **head,
            "ours": self.ours.summary(),
            "baseline": self.baseline.summary() if self.baseline else None,
            "prefix_ttft": self.prefix.summary(),
            "ratios": {
                "throughput": self.speedup,
                "total_throughput": self.ours.total_per_s / self.baseline.total_per_s if self.baseline else None,
                "shared_over_cold_ttft": self.prefix.ratio,
                "kv_utilization": (self.ours.kv_utilization / self.baseline.kv_utilization
                                   if self.baseline else None),
            },
            "targets": {"throughput": speedup_target(self.device), "shared_over_cold_ttft": TARGET_TTFT_RATIO,
                        "kv_utilization": TARGET_KV_UTILIZATION},
        }

# ---------------------------------------------------------------------------------- our engine


def kv_slots(engine: LLMEngine) -> tuple[int, int]:
    """(holding, reserved) slots of the block pool right now; see the module docstring."""
    bm = engine.block_manager
    bs = bm.block_size
    filled: dict[int, int] = {}  # physical block -> computed tokens in it, once per block
    for request in engine.requests.values():
        for state in request.samples:
            seq = state.seq
            for i, block_id in enumerate(seq.block_table):
                n = min(bs, max(0, seq.num_computed_tokens - i * bs))
                filled[block_id] = max(filled.get(block_id, 0), n)
    reserved = int((bm.pool.ref_cnt > 0).sum()) * bs
    return sum(filled.values()), reserved


def run_ours(engine: LLMEngine, requests: list[BenchRequest]) -> RunResult:
    """All requests at once, stepped to completion; KV slots sampled after every step (the
    sampling time is left out of the elapsed time)."""
    slot_time = SlotTime()
    sampling_s = 0.0
    start = time.perf_counter()
    ids = [engine.add_request(r.prompt, forced_length(r.max_tokens)) for r in requests]
    done: dict[str, RequestOutput] = {}
    while len(done) < len(ids):
        t0 = time.perf_counter()
        done.update((o.request_id, o) for o in engine.step() if o.finished)
        t1 = time.perf_counter()
        slot_time.add(*kv_slots(engine), t1 - t0)
        sampling_s += time.perf_counter() - t1
    elapsed = time.perf_counter() - start - sampling_s
    outputs = [done[i] for i in ids]
    for r, out in zip(requests, outputs):
        if len(out.token_ids) != r.max_tokens:
            raise RuntimeError(f"{out.request_id} generated {len(out.token_ids)} tokens, not {r.max_tokens}")
    return RunResult("ours", elapsed, sum(len(o.token_ids) for o in outputs), sum(len(r.prompt) for r in requests),
                     slot_time.utilization, [o.metrics.ttft_s for o in outputs], engine.scheduler.num_preemptions)


def warm_up(llm: LLM, workload: Workload) -> None:
    """One unrelated request first, so no measured request pays for first-call costs."""
    llm.generate([workload.warmup.prompt], forced_length(workload.warmup.max_tokens))


def measure_prefix_ttft(llm: LLM, workload: Workload) -> PrefixTTFT:
    """Cold TTFT of one shared-prefix request, then each other one alone on the warm cache."""
    warm_up(llm, workload)
    first, *rest = workload.shared
    # Only the first token matters here; a few more keep the request realistic without minutes of decode.
    cold = llm.generate([first.prompt], forced_length(min(8, first.max_tokens)))[0].metrics
    warm = [llm.generate([r.prompt], forced_length(min(8, r.max_tokens)))[0].metrics for r in rest]
    return PrefixTTFT(workload.prefix_len, cold.ttft_s, cold.num_cached_tokens,
                      [m.ttft_s for m in warm], [m.num_cached_tokens for m in warm])

# ---------------------------------------------------------------------------------- transformers


class StepClock(StoppingCriteria):
    """Records when each generation step ends; never stops anything."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if input_ids.is_cuda:
            torch.cuda.synchronize(input_ids.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class BatchTrace:
    prompt_lens: list[int]
    output_lens: list[int]
    start: float
    step_ends: list[float]  # one per generation step; the first ends the prefill


def generate_batch(model, batch: list[BenchRequest], pad_id: int) -> BatchTrace:
    """One static batch, left-padded, every member run to the batch's longest output."""
    width = max(len(r.prompt) for r in batch)
    new = max(r.max_tokens for r in batch)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt)) + r.prompt for r in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in batch], device=model.device)
    clock = StepClock()
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([clock]))
    if out.shape[1] != width + new or len(clock.times) != new:
        raise RuntimeError(f"transformers generated {out.shape[1] - width} tokens in {len(clock.times)} steps, not {new}")
    return BatchTrace([len(r.prompt) for r in batch], [r.max_tokens for r in batch], start, clock.times)


def contiguous_slot_time(traces: list[BatchTrace]) -> SlotTime:
    """Slot-seconds of caches preallocated for each padded batch; see the module docstring."""
    slot_time = SlotTime()
    for trace in traces:
        steps = len(trace.step_ends)
        reserved = len(trace.prompt_lens) * (max(trace.prompt_lens) + steps)
        for j, (t0, t1) in enumerate(zip([trace.start] + trace.step_ends, trace.step_ends), start=1):
            holding = sum(p + min(j, n) - 1 for p, n in zip(trace.prompt_lens, trace.output_lens))
            slot_time.add(holding, reserved, t1 - t0)
    return slot_time


def run_transformers(model, workload: Workload, batch_size: int, pad_id: int) -> RunResult:
    requests = workload.requests
    with torch.inference_mode():
        generate_batch(model, [workload.warmup], pad_id)  # the same warm-up as ours
        start = time.perf_counter()
        traces = [generate_batch(model, requests[i:i + batch_size], pad_id)
                  for i in range(0, len(requests), batch_size)]
        elapsed = time.perf_counter() - start
    ttft = [t.step_ends[0] - start for t in traces for _ in t.prompt_lens]
    return RunResult("transformers", elapsed, workload.output_tokens, workload.prompt_tokens,
                     contiguous_slot_time(traces).utilization, ttft)


def load_transformers(model_path: Path, dtype: torch.dtype, device: str):
    """transformers on the same weights: a folder, or a GGUF file through its own GGUF reader."""
    path = Path(model_path)
    if path.suffix.lower() != ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
        return model.to(device).eval()
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    model.load_state_dict({k: torch.as_tensor(v).to(dtype) for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    return model.to(device).eval()

# ---------------------------------------------------------------------------------- report


def speedup_target(device: str) -> float:
    return TARGET_SPEEDUP["cuda" if device.startswith("cuda") else "cpu"]


def format_report(r: Report) -> str:
    o, b, p = r.ours, r.baseline, r.prefix

    def row(label: str, ours: str, base: str = "-", ratio: str = "-", target: str = "") -> str:
        return f"{label:<28}{ours:>12}{base:>14}{ratio:>10}  {target}"

    def pair(f, fmt: str) -> tuple[str, str, str]:
        if b is None:
            return format(f(o), fmt), "-", "-"
        return format(f(o), fmt), format(f(b), fmt), f"{f(o) / f(b):.2f}x"

    goal = speedup_target(r.device)
    speed_target = "" if b is None else f">= {goal:g}x {mark(r.speedup >= goal)}"
    lines = [
        f"engine.bench  device={r.device}  seed={r.seed}  scale={r.scale:g}  hf_batch={r.hf_batch}",
        f"model {r.model_path}",
        f"{r.num_requests} requests ({r.num_shared} share a {p.prefix_len}-token prefix): "
        f"{r.prompt_tokens} prompt + {r.output_tokens} generated tokens",
        "",
        row("", "ours", "transformers", "ours/hf", "target"),
        row("generated tok/s", *pair(lambda x: x.generated_per_s, ".1f"), speed_target),
        row("total tok/s (incl. prompt)", *pair(lambda x: x.total_per_s, ".1f")),
        row("wall time (s)", *pair(lambda x: x.elapsed_s, ".2f")),
        row("median TTFT, mixed (s)", *pair(lambda x: x.median_ttft_s, ".3f")),
        row("KV slot utilization (%)", *pair(lambda x: x.kv_utilization * 100, ".1f"),
            f">= {TARGET_KV_UTILIZATION:.0%} {mark(o.kv_utilization >= TARGET_KV_UTILIZATION)}"),
        row("preemptions", str(o.preemptions)),
        "",
        f"prefix TTFT: cold {p.cold_ttft_s * 1000:.1f} ms ({p.cold_cached_tokens} cached tokens), "
        f"shared median {p.shared_median_s * 1000:.1f} ms (cached tokens {p.shared_cached_tokens})",
        f"shared/cold = {p.ratio:.4f} (1/{1 / p.ratio:.1f})   target <= 1/{1 / TARGET_TTFT_RATIO:g} "
        f"{mark(p.ratio <= TARGET_TTFT_RATIO)}",
    ]
    return "\n".join(lines)


def release_memory() -> None:
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_mixed(model: str | None, engine_args: dict, seed: int = 0, scale: float = 1.0, hf_batch: int = 8,
              skip_baseline: bool = False) -> Report:
    """The whole comparison: ours on the workload, the shared-prefix TTFTs, then transformers."""
    llm = LLM(model, **engine_args)
    engine = llm.engine
    model_path, dtype, device = engine.model_path, engine.config.dtype, engine.config.device
    workload = make_workload(llm.tokenizer.hf, seed, scale)
    pad_id = llm.tokenizer.hf.pad_token_id
    pad_id = pad_id if pad_id is not None else llm.tokenizer.eos_token_id
    warm_up(llm, workload)
    ours = run_ours(engine, workload.requests)
    del llm, engine  # free its KV pool before the next engine allocates one
    release_memory()
    prefix = measure_prefix_ttft(LLM(model, **engine_args), workload)
    release_memory()
    baseline = None
    if not skip_baseline:
        baseline = run_transformers(load_transformers(model_path, dtype, device), workload, hf_batch, pad_id)
        release_memory()
    return Report(device, str(model_path), seed, scale, hf_batch, len(workload.requests), len(workload.shared),
                  workload.prompt_tokens, workload.output_tokens, ours, baseline, prefix)
