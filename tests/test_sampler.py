"""The CPU sampler (the torch reference) on synthetic logits: each filter does what it says,
seeded draws reproduce whatever the batch, forks read their parent's logits."""
import torch

from kernels.sampling import SamplingState, sample_ref

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def state_for(num_rows: int, vocab: int, **params) -> SamplingState:
    state = SamplingState.allocate(num_rows, vocab, torch.device("cpu"))
    for name, value in params.items():
        getattr(state, name).fill_(value)
    return state


def draws(count=2000, **params):
    rows = torch.zeros(count, dtype=torch.int32)
    return sample_ref(LOGITS.expand(count, -1).contiguous(), rows, torch.arange(count), state_for(1, 4, **params))


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert sample_ref(logits, torch.tensor([0, 1]), torch.zeros(2), state_for(2, 3)).tolist() == [1, 0]


def test_temperature_one_follows_the_distribution():
    freq = torch.bincount(draws(temperature=1.0, seed=3).long(), minlength=4).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)


def test_top_k_top_p_min_p_cut_the_tail():
    assert set(draws(temperature=1.0, top_k=2).tolist()) == {0, 1}
    assert set(draws(temperature=1.0, top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert set(draws(temperature=1.0, min_p=0.5).tolist()) == {0, 1}  # 0.15 < 0.5 * 0.5
    assert set(draws(temperature=1.0, top_k=1).tolist()) == {0}


def test_low_temperature_sharpens():
    cold = torch.bincount(draws(temperature=0.2, seed=1).long(), minlength=4).float() / 2000
    expected = torch.softmax(LOGITS[0] / 0.2, dim=-1)  # p ** 5, renormalised: 0.925 for the top token
    assert torch.allclose(cold, expected, atol=0.03)


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    for seen, expected in ((0, 1), (2, 0)):  # 2.0 / 1.5 < 1.9; a seen negative logit only sinks
        state = state_for(1, 3, penalty=1.5)
        state.seen[0, seen] = 1
        assert sample_ref(logits.clone(), torch.tensor([0]), torch.zeros(1), state).tolist() == [expected]
    assert state.last_token.tolist() == [0] and state.seen[0].tolist() == [1, 0, 1]  # the draw is recorded


def test_each_row_draws_from_its_own_seed():
    logits = torch.randn(3, 50)
    state = state_for(3, 50, temperature=1.0)
    state.seed.copy_(torch.tensor([1, 2, 3]))
    a = sample_ref(logits.clone(), torch.tensor([0, 1, 2]), torch.full((3,), 9), state)
    b = sample_ref(logits[1:2].clone(), torch.tensor([1]), torch.full((1,), 9), state)
    assert a[1] == b[0]  # the batch around it does not change a seeded row's draw
    forks = sample_ref(logits, torch.tensor([0, 1, 2]), torch.full((3,), 9), state, logit_rows=torch.tensor([1, 1, 1]))
    assert forks[1] == b[0]
    assert len(set(sample_ref(logits, torch.tensor([1] * 8), torch.arange(8), state, torch.tensor([1] * 8)).tolist())) > 1
