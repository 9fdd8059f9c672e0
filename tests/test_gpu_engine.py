"""The engine on CUDA (bf16, Triton kernels, CUDA graphs) against transformers on a random-weight
model in Llama-3.2-1B shapes. Skipped where there is no GPU; run on the H100 through the device tool."""
import gc

import pytest
import torch

from engine import LLM, SamplingParams
from engine.bench.dummy import make_dummy_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NUM_PROMPTS, NEW_TOKENS = 8, 64  # 8 x 64 = 512 positions compared


def free_the_gpu() -> None:
    """Collect the engines made before (reference cycles keep one alive past its last name), so
    that the next one sizes its KV pool from what is really free: run as a whole, this file's
    engines used to pile up until one ran out of memory."""
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(autouse=True)
def _each_test_starts_on_a_free_gpu():
    free_the_gpu()
    yield
    free_the_gpu()


@pytest.fixture(scope="module")
def llama_1b(tmp_path_factory):
    return make_dummy_model("llama-1b", tmp_path_factory.mktemp("llama-1b"))


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (int(n),), generator=gen).tolist() for n in torch.linspace(20, 700, NUM_PROMPTS)]


@pytest.fixture(scope="module", params=["async", "sync", "reference"])
def ours(llama_1b, prompts, request):
    """Our greedy tokens: the fused Triton kernels with asynchronous and synchronous steps, and the
    unfused model (the torch references, run on the GPU) as the comparison for the fused one."""
    import kernels
    free_the_gpu()  # made before the test's own autouse fixture runs: the previous param's engine may linger
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    if request.param == "reference":
        with kernels.reference_ops():
            llm = LLM(llama_1b, device="cuda", max_model_len=2048, max_num_batched_tokens=512, cuda_graphs=False)
            outs = llm.generate(prompts, params)
    else:
        llm = LLM(llama_1b, device="cuda", max_model_len=2048, max_num_batched_tokens=512,
                  async_scheduling=request.param == "async")
        assert llm.engine.runner.graphs is not None and llm.engine.config.dtype == torch.bfloat16
        assert llm.engine.async_scheduling is (request.param == "async")
        outs = llm.generate(prompts, params)
    assert llm.stats()["blocks_used"] == 0
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def hf(llama_1b):
    """transformers in bf16 (what we are compared with) and fp32 (the precise reference)."""
    from transformers import AutoModelForCausalLM
    load = lambda dtype: AutoModelForCausalLM.from_pretrained(str(llama_1b), dtype=dtype).cuda().eval()  # noqa: E731
    return load(torch.bfloat16), load(torch.float32)


NEAR_TIE = 0.1  # fp32 logit margin under which bf16 rounding alone can swap the top two


def test_top1_agreement_over_512_positions(ours, hf, prompts):
    """Teacher-forced on our own output: at each of 512 positions, is our token the argmax?

    With random weights many positions are near-ties, where bf16 decides by rounding: there
    transformers in bf16 disagrees with itself in fp32 too. So: we must agree with the fp32
    reference about as often as transformers-bf16 does, and on 99% of positions that are not
    near-ties.
    """
    hf16, hf32 = hf
    ours_ok = theirs_ok = decisive = decisive_ok = total = 0
    with torch.inference_mode():
        for prompt, out in zip(prompts, ours):
            ids = torch.tensor([prompt + out], device="cuda")
            ref = hf32(ids).logits[0, len(prompt) - 1:-1].float()
            bf16 = hf16(ids).logits[0, len(prompt) - 1:-1].float().argmax(-1)
            target = torch.tensor(out, device="cuda")
            top2 = ref.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) >= NEAR_TIE
            hit = ref.argmax(-1) == target
            ours_ok += hit.sum().item()
            theirs_ok += (bf16 == ref.argmax(-1)).sum().item()
            decisive += clear.sum().item()
            decisive_ok += (hit & clear).sum().item()
            total += len(out)
    assert total == 512
    print(f"top-1 vs fp32: ours {ours_ok}/512, transformers-bf16 {theirs_ok}/512, "
          f"decisive positions {decisive_ok}/{decisive}")
    # Near-ties are decided by rounding, ours one way and transformers' another: allow a tenth of
    # them (a fixed 5 failed once at 473 against 479, with 190 near-ties, all 322 decisive right).
    assert ours_ok >= theirs_ok - max(5, (total - decisive) // 10)
    assert decisive_ok / decisive >= 0.99


def test_greedy_text_identical_for_16_tokens(ours, hf, prompts):
    """Our first 16 greedy tokens equal transformers' (fp32 reference), or part at a near-tie."""
    _, hf32 = hf
    identical = 0
    with torch.inference_mode():
        for prompt, out in zip(prompts, ours):
            logits = hf32(torch.tensor([prompt + out[:16]], device="cuda")).logits[0, len(prompt) - 1:-1].float()
            ref = logits.argmax(-1).tolist()
            if ref == out[:16]:
                identical += 1
                continue
            first = next(i for i, (a, b) in enumerate(zip(ref, out)) if a != b)
            top2 = logits[first].topk(2).values
            assert (top2[0] - top2[1]).item() < NEAR_TIE, f"diverged at token {first} with a clear margin"
    print(f"greedy: {identical}/{len(prompts)} prompts identical for 16 tokens")


def test_decode_replays_cuda_graphs(llama_1b):
    llm = LLM(llama_1b, device="cuda", max_model_len=1024, max_num_seqs=8)
    graphs = llm.engine.runner.graphs
    replays = []
    original = graphs.run
    graphs.run = lambda step: replays.append(step.num_decode) or original(step)
    llm.generate([[1, 2, 3]] * 3, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert replays and set(replays) == {3}


def test_seeded_sampling_is_the_same_in_graphs_and_eagerly(llama_1b):
    params = SamplingParams(n=2, max_tokens=24, temperature=0.8, top_p=0.9, top_k=50, min_p=0.02,
                            repetition_penalty=1.1, seed=5, ignore_eos=True)
    outs = {}
    for graphs in (True, False):
        llm = LLM(llama_1b, device="cuda", max_model_len=1024, cuda_graphs=graphs)
        outs[graphs] = [o.token_ids for o in llm.generate([[5, 6, 7, 8]], params)[0].outputs]
        again = [o.token_ids for o in llm.generate([[5, 6, 7, 8]], params)[0].outputs]
        assert again == outs[graphs]
        del llm
        free_the_gpu()
    assert outs[True] == outs[False]
    assert outs[True][0] != outs[True][1]


def test_chats_arriving_together_replay_one_prefill_graph(llama_1b):
    """Eight chats over a cached document arrive at once: their last chunks (8 + 24 tokens each,
    256 in all) run as one replay of the (8, 256) prefill graph, and every greedy answer is the
    one eager steps give (same shapes, same key splits: the same bits)."""
    gen = torch.Generator().manual_seed(3)
    doc = torch.randint(0, 256, (600,), generator=gen).tolist()  # 37 full blocks, 8 tokens past them
    questions = [torch.randint(0, 256, (24,), generator=gen).tolist() for _ in range(8)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outs, shapes = {}, []
    for graphs in (True, False):
        llm = LLM(llama_1b, device="cuda", max_model_len=2048, max_num_batched_tokens=2048, cuda_graphs=graphs)
        llm.generate([doc + [7]], params)  # the document's blocks are cached
        if graphs:
            prefill = llm.engine.runner.prefill_graphs
            prefill.run = lambda step, shape, run=prefill.run: shapes.append(shape) or run(step, shape)
        answers = llm.generate([doc + q for q in questions], params)
        if graphs:
            del prefill.run, prefill  # they hold the graphs, and through them the model and its KV pool
        assert all(a.metrics.num_cached_tokens == 592 for a in answers)
        outs[graphs] = [a.token_ids for a in answers]
        assert llm.stats()["blocks_used"] == 0
        del llm, answers
        free_the_gpu()
    assert shapes == [(8, 256)]
    assert outs[True] == outs[False]


def test_kv_tiers_on_the_gpu(llama_1b, tmp_path):
    """A document's blocks evicted to pinned RAM come back over the side stream, and after a
    restart come from disk; each time the answer is the one given while the blocks were still on
    the device (the same cached prefix, so the same kernels over the same KV bytes)."""
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    gen = torch.Generator().manual_seed(1)
    doc, other, another = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (1040, 1100, 1100)]
    tiers = dict(device="cuda", max_model_len=2048, max_num_batched_tokens=512, num_kv_blocks=140,
                 host_kv_cache="256MiB", disk_kv_cache="256MiB", disk_kv_dir=tmp_path, disk_kv_min_prefix_tokens=512)
    llm = LLM(llama_1b, **tiers)
    assert llm.engine.kv_tiers is not None and llm.engine.kv_tiers.host.pin
    llm.generate([doc], params)
    on_device = llm.generate([doc], params)[0]
    assert on_device.metrics.num_device_cached_tokens == 1024  # 64 full blocks; the 65th holds the last token
    for prompt in (other, another):  # 2 x 70 blocks through a 140-block pool: the document's are evicted
        llm.generate([prompt], params)
    assert llm.stats()["blocks_offloaded"] >= 60
    from_ram = llm.generate([doc], params)[0]
    assert from_ram.metrics.num_ram_cached_tokens == 1024
    assert from_ram.token_ids == on_device.token_ids
    llm.engine.kv_tiers.drain()
    assert llm.stats()["blocks_used"] == 0
    del llm
    free_the_gpu()
    restarted = LLM(llama_1b, **tiers)
    from_disk = restarted.generate([doc], params)[0]
    assert from_disk.metrics.num_disk_cached_tokens == 1024
    assert from_disk.token_ids == on_device.token_ids
    assert restarted.stats()["blocks_used"] == 0
