"""The per-layer Triton kernels (residual add + RMSNorm, SiLU x up, embedding gather) and the
sampler against their torch references. CPU cases run interpreted in a child pytest."""
import pytest
import torch

pytest.importorskip("triton")

from triton_helpers import DEVICES, DTYPE_IDS, DTYPES, INTERPRET, fix_interpreter, run_interpreted  # noqa: E402

from kernels.activation import silu_mul_ref, silu_mul_triton  # noqa: E402
from kernels.embedding import embed_tokens_ref, embed_tokens_triton  # noqa: E402
from kernels.norm import add_rmsnorm_ref, add_rmsnorm_triton  # noqa: E402
from kernels.sampling import SamplingState, sample_ref, sample_triton  # noqa: E402

if INTERPRET:
    fix_interpreter()


@pytest.mark.skipif(INTERPRET, reason="this is the interpreted child")
def test_interpreted_cpu_cases():
    run = run_interpreted(__file__)
    assert run.returncode == 0 and run.passed > 0, run.output


def same_rounding(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Kernel and reference round the same way; they may differ by one unit in the last place
    (rsqrt against 1/sqrt, summation order), never more."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if actual.dtype == torch.float32:
        return torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)
    return torch.allclose(actual.float(), expected.float(), rtol=2 * torch.finfo(actual.dtype).eps, atol=1e-3)


@pytest.mark.parametrize("case", ["add", "first", "rows"])
@pytest.mark.parametrize("hidden", [64, 576, 2048])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_add_rmsnorm_matches_reference(device, dtype, hidden, case):
    gen = torch.Generator(device).manual_seed(hidden)
    n = 7 if device == "cpu" else 300
    x = torch.randn(n, hidden, generator=gen, device=device).to(dtype)
    residual = None if case == "first" else torch.randn(n, hidden, generator=gen, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen, device=device)).to(dtype)
    rows = torch.tensor([n - 1, 0, 3], device=device) if case == "rows" else None
    res_kernel = None if residual is None else residual.clone()
    res_ref = None if residual is None else residual.clone()
    out, total = add_rmsnorm_triton(x, res_kernel, weight, 1e-5, rows)
    out_ref, total_ref = add_rmsnorm_ref(x, res_ref, weight, 1e-5, rows)
    assert same_rounding(out, out_ref)
    torch.testing.assert_close(total, total_ref, rtol=0, atol=0)
    if case == "add":  # the layer's residual stream is updated in place
        assert total.data_ptr() == res_kernel.data_ptr()
        torch.testing.assert_close(res_kernel, res_ref, rtol=0, atol=0)
    if case == "rows":  # the final norm reads some rows and leaves the stream alone
        torch.testing.assert_close(res_kernel, residual, rtol=0, atol=0)


@pytest.mark.parametrize("inter", [128, 1536, 8192])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_silu_mul_matches_reference(device, dtype, inter):
    gen = torch.Generator(device).manual_seed(inter)
    n = 5 if device == "cpu" else 257
    gate_up = (3 * torch.randn(n, 2 * inter, generator=gen, device=device)).to(dtype)
    assert same_rounding(silu_mul_triton(gate_up), silu_mul_ref(gate_up))


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_reads_host_ids_and_device_tokens(device):
    gen = torch.Generator(device).manual_seed(0)
    weight = torch.randn(50, 96, generator=gen, device=device).to(torch.bfloat16)
    last_token = torch.tensor([7, 49, 3], dtype=torch.int32, device=device)  # what the sampler left per row
    host_ids = torch.tensor([1, 0, 2, 0, 40], device=device)
    src_rows = torch.tensor([-1, 2, -1, 1, -1], dtype=torch.int32, device=device)  # rows 1 and 3 decode
    out = embed_tokens_triton(weight, host_ids, src_rows, last_token)
    assert torch.equal(out, embed_tokens_ref(weight, host_ids, src_rows, last_token))
    assert torch.equal(out, weight[[1, 3, 2, 49, 40]])


def sampling_state(num_rows: int, vocab: int, device: str, **params) -> SamplingState:
    state = SamplingState.allocate(num_rows, vocab, device)
    for name, values in params.items():
        getattr(state, name).copy_(torch.tensor(values, device=device))
    return state


def clone_state(state: SamplingState) -> SamplingState:
    return SamplingState(*(t.clone() for t in vars(state).values()))


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_matches_reference_for_every_parameter(device):
    """Rows with greedy, penalties, temperature, top-k, top-p, min-p and their mix: the kernel's
    bisected cut-offs keep the same tokens as the reference's sort, and the same hash draws the
    same token from them."""
    gen = torch.Generator(device).manual_seed(5)
    vocab = 500 if device == "cpu" else 128256
    rows = 8
    logits = (2 * torch.randn(rows, vocab, generator=gen, device=device)).to(torch.bfloat16)
    params = dict(temperature=[0.0, 0.0, 1.0, 0.7, 1.3, 0.9, 1.0, 0.5],
                  top_k=[0, 0, 0, 50, 0, 20, 0, 200], top_p=[1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 1.0, 0.95],
                  min_p=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.02],
                  penalty=[1.0, 1.3, 1.0, 1.0, 1.2, 1.0, 1.0, 1.1], seed=[1, 2, 3, 4, 2**62, 6, 7, 8])
    state = sampling_state(rows + 2, vocab, device, **{k: v + [v[0]] * 2 for k, v in params.items()})
    state.seen[:, :vocab // 3] = 1  # the first third was seen: penalised where a row has a penalty
    seq_rows = torch.arange(rows, dtype=torch.int32, device=device)
    counters = torch.arange(100, 100 + rows, device=device)
    ref_state = clone_state(state)
    matches = 0
    for trial in range(3):
        out = sample_triton(logits, seq_rows, counters + trial, state)
        ref = sample_ref(logits, seq_rows, counters + trial, ref_state)
        matches += int((out == ref).sum())
        assert torch.equal(state.last_token[:rows], out)
        assert torch.equal(ref_state.last_token[:rows], ref)
        assert bool(state.seen[torch.arange(rows, device=device), out.long()].all())
    assert matches >= 3 * rows - 1  # one cut-off may land within the bisection's resolution
    assert out[:2].tolist() == ref[:2].tolist()  # greedy rows are exact


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_filters_and_seeds(device):
    """Draws from a known distribution: each filter cuts what it should; a seeded row draws the
    same token whatever its batch; forks read their parent's logits row. Under the interpreter
    (slow) the kernel draws 48 times and must agree with the reference, which tests/test_sampler.py
    checks statistically."""
    sampler = "kernel"
    vocab = 4
    count = 2000 if sampler == "reference" or device != "cpu" else 24
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], device=device)).expand(count, -1).contiguous()
    counters = torch.arange(count, device=device)
    rows = torch.zeros(count, dtype=torch.int32, device=device)

    def draws(**params):
        state = sampling_state(1, vocab, device, **{k: [v] for k, v in params.items()})
        tokens = (sample_ref if sampler == "reference" else sample_triton)(logits, rows, counters, state)
        if sampler == "kernel":
            state = sampling_state(1, vocab, device, **{k: [v] for k, v in params.items()})
            assert torch.equal(tokens, sample_ref(logits, rows, counters, state))
        return tokens.tolist()

    freq = torch.bincount(torch.tensor(draws(temperature=1.0, seed=3)), minlength=4).float() / count
    if count >= 2000:
        assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)
    assert set(draws(temperature=1.0, top_k=2)) <= {0, 1}
    assert set(draws(temperature=1.0, top_p=0.7)) <= {0, 1}  # 0.5 < 0.7; 0.5 + 0.3 reaches it
    assert set(draws(temperature=1.0, min_p=0.5)) <= {0, 1}  # 0.15 < 0.5 * 0.5
    assert set(draws(temperature=1.0, top_k=1)) == {0}
    if count >= 2000:
        assert set(draws(temperature=1.0, top_k=2)) == {0, 1}
    cold = torch.bincount(torch.tensor(draws(temperature=0.2, seed=4)), minlength=4).float() / count
    if count >= 2000:  # p ** 5, renormalised: 0.925 for the top token
        assert torch.allclose(cold, torch.softmax(logits[0] / 0.2, dim=-1).cpu(), atol=0.03)
    fn = sample_ref if sampler == "reference" else sample_triton
    penalised = torch.tensor([[2.0, 1.9, -1.0]], device=device)
    one = torch.zeros(1, dtype=torch.int32, device=device)
    for seen, expected in ((0, 1), (2, 0)):  # 2.0 / 1.5 < 1.9; a seen negative logit only sinks further
        state = sampling_state(1, 3, device, penalty=[1.5])
        state.seen[0, seen] = 1
        assert fn(penalised, one, counters[:1], state).tolist() == [expected]

    gen = torch.Generator(device).manual_seed(1)
    wide = torch.randn(3, 500, generator=gen, device=device)
    state = sampling_state(3, 500, device, temperature=[1.0] * 3, seed=[11, 12, 13])
    batch = fn(wide, torch.arange(3, dtype=torch.int32, device=device), counters[:3] + 7, state)
    alone = fn(wide[1:2], torch.tensor([1], dtype=torch.int32, device=device), counters[1:2] + 7, state)
    assert batch[1] == alone[0]
    forks = fn(wide, torch.tensor([0, 1, 2], dtype=torch.int32, device=device), counters[:3] + 7, state,
               logit_rows=torch.tensor([1, 1, 1], device=device))
    assert forks[1] == alone[0]  # row 1's own logits and seed
