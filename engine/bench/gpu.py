"""GPU-only parts of `python -m engine.bench --device cuda`: the decode step at batch 64 against
its memory-bandwidth roofline, and 32 chats over one 4096-token document.

Roofline: a decode step must read every weight once and every live KV row once; nothing can beat
(weight bytes + live KV bytes) / copy bandwidth, with the bandwidth measured here by a large
device-to-device copy (bytes read + written per second).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from engine.llm import LLM
from engine.sampling_params import SamplingParams

TARGET_ROOFLINE_RATIO = 1.4
TARGET_DOC_TTFT_RATIO = 1 / 10


def copy_bandwidth(device: torch.device, gib: float = 1.0, iters: int = 20) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() / statistics.median(times)


@dataclass
class DecodeRoofline:
    batch: int
    context: int
    step_ms: float
    weight_bytes: int
    kv_bytes: int
    bandwidth_gbs: float

    @property
    def roofline_ms(self) -> float:
        return (self.weight_bytes + self.kv_bytes) / (self.bandwidth_gbs * 1e9) * 1000

    @property
    def ratio(self) -> float:
        return self.step_ms / self.roofline_ms


def decode_roofline(llm: LLM, bandwidth: float, batch: int = 64, context: int = 512, steps: int = 32) -> DecodeRoofline:
    """Wall time of whole engine steps (host work included) once `batch` sequences all decode."""
    engine = llm.engine
    gen = torch.Generator().manual_seed(1)
    # Early requests decode while later ones prefill, so give them room and abort them after timing.
    params = SamplingParams(max_tokens=4 * context, temperature=0, ignore_eos=True)
    ids = [engine.add_request(torch.randint(0, 250, (context,), generator=gen).tolist(), params)
           for _ in range(batch)]
    while any(not engine.requests[r].samples[0].seq.output_token_ids for r in ids):
        engine.step()
    engine.step()
    torch.cuda.synchronize()
    times = []
    live_tokens = 0
    for _ in range(steps):
        live_tokens = sum(s.seq.num_tokens for r in ids for s in engine.requests[r].samples)
        t0 = time.perf_counter()
        engine.step()  # ends in reading the sampled ids: a sync
        times.append(time.perf_counter() - t0)
    for r in ids:
        engine.abort_request(r)
    runner = engine.runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    kv_bytes = live_tokens * runner.bytes_per_block() // engine.config.block_size
    return DecodeRoofline(batch, context, statistics.median(times) * 1000, weight_bytes, kv_bytes, bandwidth / 1e9)


@dataclass
class SharedDocument:
    doc_tokens: int
    first_ttft_s: float
    others_ttft_s: list[float]
    doc_blocks: int
    doc_block_refs: list[int]  # ref count of each document block while all chats run

    @property
    def ratio(self) -> float:
        return statistics.median(self.others_ttft_s) / self.first_ttft_s

    @property
    def held_once(self) -> bool:
        return all(r == 1 + len(self.others_ttft_s) for r in self.doc_block_refs)


def shared_document(llm: LLM, doc_tokens: int = 4096, chats: int = 32) -> SharedDocument:
    """Chat 1 reads the document cold; chats 2..32 arrive together while it answers."""
    engine = llm.engine
    gen = torch.Generator().manual_seed(2)
    doc = torch.randint(0, 250, (doc_tokens,), generator=gen).tolist()
    questions = [torch.randint(0, 250, (24,), generator=gen).tolist() for _ in range(chats)]
    long, short = (SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (64, 8))
    first = engine.add_request(doc + questions[0], long)
    while not engine.requests[first].samples[0].seq.output_token_ids:
        engine.step()
    others = [engine.add_request(doc + q, short) for q in questions[1:]]
    refs: list[int] = []
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        running = engine.scheduler.running
        if not refs and len(running) == chats and all(not s.in_prefill for s in running):
            table = engine.requests[first].samples[0].seq.block_table[:doc_tokens // engine.config.block_size]
            refs = [engine.block_manager.pool.blocks[b].ref_cnt for b in table]
    return SharedDocument(doc_tokens, outputs[first].metrics.ttft_s, [outputs[o].metrics.ttft_s for o in others],
                          doc_tokens // engine.config.block_size, refs)


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def report(roof: DecodeRoofline, doc: SharedDocument) -> tuple[str, dict]:
    lines = [
        f"copy bandwidth {roof.bandwidth_gbs:.0f} GB/s",
        f"decode step, batch {roof.batch} x {roof.context} ctx: {roof.step_ms:.2f} ms; roofline "
        f"{roof.roofline_ms:.2f} ms ({roof.weight_bytes / 1e9:.2f} GB weights + {roof.kv_bytes / 1e9:.2f} GB KV); "
        f"ratio {roof.ratio:.2f}  target <= {TARGET_ROOFLINE_RATIO} {mark(roof.ratio <= TARGET_ROOFLINE_RATIO)}",
        f"{1 + len(doc.others_ttft_s)} chats over one {doc.doc_tokens}-token document: TTFT chat 1 "
        f"{doc.first_ttft_s * 1000:.1f} ms, chats 2-{1 + len(doc.others_ttft_s)} median "
        f"{statistics.median(doc.others_ttft_s) * 1000:.1f} ms (max {max(doc.others_ttft_s) * 1000:.1f}); "
        f"ratio 1/{1 / doc.ratio:.1f}  target <= 1/10 {mark(doc.ratio <= TARGET_DOC_TTFT_RATIO)}",
        f"document blocks ({doc.doc_blocks}) held once, ref counts {sorted(set(doc.doc_block_refs))}: "
        f"{mark(doc.held_once)}",
    ]
    data = {"decode_roofline": {**asdict(roof), "roofline_ms": roof.roofline_ms, "ratio": roof.ratio},
            "shared_document": {**asdict(doc), "ratio": doc.ratio, "held_once": doc.held_once}}
    return "\n".join(lines), data
