"""The patterns our users' other engines are measured on, run through our engine.

- `decode_pattern`: N sequences of `prompt` random tokens plus `gen` generated ones, all
  submitted at once, as llama.cpp's `llama-batched-bench -npp 512 -ntg 128 -npl N` runs them
  (distinct prompts, so no prefix is shared). Decode tok/s counts the tokens after each
  sequence's first over the time from the last first token to the last token, which is what
  batched-bench's S_TG measures (its TG phase starts once every prompt is in); prefill tok/s is
  N x prompt over the time to the last first token (S_PP).
- `shared_document`: chats over one document: the first reads it cold, a second comes alone
  once the first is done, then `together` more arrive at once. TTFTs from the engine's metrics.
- `chats`: the CPU anchor's client (../shared/anchors/llamacpp_server_client.py) in-process:
  single-stream decode, N concurrent chats of 64 tokens (aggregate tok/s over the wall time),
  and a new chat over a document another chat has read.
- `host_costs`: the host time of a prefix lookup over a 4096-token prompt and of admitting 31
  chats over one cached document, with no device work in the timed region.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

from engine.bench.compiles import counting_compiles
from engine.llm import LLM
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def forced(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(count)]


@dataclass
class DecodeRun:
    num_seqs: int
    prompt: int
    gen: int
    prefill_s: float
    decode_s: float
    compiles: list[str] = field(default_factory=list)  # Triton kernels compiled during the timed run

    @property
    def decode_tok_s(self) -> float:
        return self.num_seqs * (self.gen - 1) / self.decode_s

    @property
    def prefill_tok_s(self) -> float:
        return self.num_seqs * self.prompt / self.prefill_s

    @property
    def step_ms(self) -> float:
        return self.decode_s / (self.gen - 1) * 1000


def run_batch(engine: LLMEngine, prompts: list[list[int]], gen: int) -> tuple[float, float, list]:
    """Submit all, step to the end; returns (time to the last first token, then to the end, outputs)."""
    start = time.perf_counter()
    ids = [engine.add_request(p, forced(gen)) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        done.update((o.request_id, o) for o in engine.step() if o.finished)
    outs = [done[i] for i in ids]
    first = max(o.metrics.first_token_time for o in outs)
    end = max(o.metrics.finish_time for o in outs)
    return first - start, end - first, outs


def decode_pattern(llm: LLM, sizes=(1, 8, 32, 64), prompt: int = 512, gen: int = 128, seed: int = 0) -> list[DecodeRun]:
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    runs = []
    for n in sizes:
        # Warm-up at the same shape first (as llama-batched-bench does): the first steps of a new
        # batch shape compile kernels and capture graphs once per process, and that stays out.
        run_batch(engine, random_prompts(n, prompt, vocab, seed + 999), 8)
        with counting_compiles() as compiles:
            prefill_s, decode_s, _ = run_batch(engine, random_prompts(n, prompt, vocab, seed + n), gen)
        runs.append(DecodeRun(n, prompt, gen, prefill_s, decode_s, compiles))
    return runs


@dataclass
class SharedDocument:
    doc_tokens: int
    cold_ttft_s: float
    second_ttft_s: float
    second_cached: int
    together_ttft_s: list[float]
    together_cached: list[int]

    @property
    def second_ratio(self) -> float:
        return self.second_ttft_s / self.cold_ttft_s

    @property
    def together_ratio(self) -> float:
        return statistics.median(self.together_ttft_s) / self.cold_ttft_s


def shared_document(llm: LLM, doc_tokens: int = 4096, together: int = 31, question: int = 24,
                    seed: int = 2) -> SharedDocument:
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    doc = random_prompts(1, doc_tokens, vocab, seed)[0]
    questions = random_prompts(2 + together, question, vocab, seed + 1)
    run_batch(engine, random_prompts(1, doc_tokens + question, vocab, seed + 7), 4)  # warm-up, unrelated
    (cold,) = run_batch(engine, [doc + questions[0]], 8)[2]
    (second,) = run_batch(engine, [doc + questions[1]], 8)[2]
    outs = run_batch(engine, [doc + q for q in questions[2:]], 8)[2]
    return SharedDocument(doc_tokens, cold.metrics.ttft_s, second.metrics.ttft_s, second.metrics.num_cached_tokens,
                          [o.metrics.ttft_s for o in outs], [o.metrics.num_cached_tokens for o in outs])


@dataclass
class Chats:
    single_stream_tok_s: float
    concurrent_tok_s: dict[int, float] = field(default_factory=dict)
    doc_prompt_tokens: int = 0
    doc_cold_ttft_s: float = 0.0
    doc_new_chat_ttft_s: float = 0.0


DOC = " ".join(f"Paragraph {i}: the committee reviewed item {i * 7} and approved budget line {i * 13}." for i in range(60))


def chats(llm: LLM, counts=(8, 32)) -> Chats:
    """The same requests llama-server gets from the anchor's client, in the same order."""
    llm.generate(["warm up"], forced(8))
    out = llm.generate(["Once upon a time, in a small town"], forced(256))[0].metrics
    result = Chats((out.num_generated_tokens - 1) / (out.finish_time - out.first_token_time))
    for n in counts:
        prompts = [f"Chat {i}: tell me a story about a robot number {i}." for i in range(n)]
        start = time.perf_counter()
        outs = llm.generate(prompts, forced(64))
        result.concurrent_tok_s[n] = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)
    cold = llm.generate([DOC], forced(1))[0].metrics
    warm = llm.generate([DOC + " Question: other slot?"], forced(1))[0].metrics
    result.doc_prompt_tokens, result.doc_cold_ttft_s, result.doc_new_chat_ttft_s = (
        cold.num_prompt_tokens, cold.ttft_s, warm.ttft_s)
    return result


@dataclass
class HostCosts:
    lookup_4096_ms: float  # find_prefix over a 4096-token prompt whose blocks are all cached
    admit_31_ms: float  # the schedule() call that admits 31 chats over one cached document


def host_costs(llm: LLM, doc_tokens: int = 4096, chats_count: int = 31, repeats: int = 20) -> HostCosts:
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    doc = random_prompts(1, doc_tokens, vocab, 11)[0]
    run_batch(engine, [doc + [101]], 2)  # the document is now cached
    lookups = []
    for i in range(repeats):  # a fresh sequence each time: its keys are computed, as on arrival
        seq = Sequence(10**9 + i, "probe", doc + [102 + i], forced(1))
        t = time.perf_counter()
        hit = engine.block_manager.find_prefix(seq)
        lookups.append(time.perf_counter() - t)
    assert hit.num_blocks == doc_tokens // engine.config.block_size
    admits = []
    questions = random_prompts(chats_count * repeats, 24, vocab, 12)
    for r in range(repeats):  # the median of many: one admission is about a millisecond, and this machine jitters
        ids = [engine.add_request(doc + q, forced(1)) for q in questions[r * chats_count:(r + 1) * chats_count]]
        t = time.perf_counter()
        batch = engine.scheduler.schedule()
        admits.append(time.perf_counter() - t)
        assert len(batch.seqs) == chats_count, "all chats admitted in one step"
        for seq in batch.seqs:  # give everything back without running the step
            engine.scheduler.finish(seq, "abort")
        for rid in ids:
            del engine.requests[rid]
    return HostCosts(statistics.median(lookups) * 1000, statistics.median(admits) * 1000)
