"""The sampler on synthetic logits: each filter does what it says, seeded draws reproduce."""
import torch

from engine.sampler import SamplingRow, sample
from engine.sampling_params import SamplingParams

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def row(seed=0, **kw):
    return SamplingRow(SamplingParams(**kw), [], torch.Generator().manual_seed(seed))


def draws(count=2000, **kw):
    g = torch.Generator().manual_seed(0)
    rows = [SamplingRow(SamplingParams(**kw), [], g) for _ in range(count)]
    return sample(LOGITS.expand(count, -1).clone(), rows)


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert sample(logits, [row(temperature=0), row(temperature=0)]).tolist() == [1, 0]


def test_temperature_one_follows_the_distribution():
    freq = torch.bincount(draws(temperature=1.0), minlength=4).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)


def test_top_k_top_p_min_p_cut_the_tail():
    assert set(draws(top_k=2).tolist()) == {0, 1}
    assert set(draws(top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert set(draws(min_p=0.5).tolist()) == {0, 1}  # 0.15 < 0.5 * 0.5
    assert set(draws(top_k=1).tolist()) == {0}


def test_low_temperature_sharpens():
    cold = torch.bincount(draws(temperature=0.2), minlength=4).float() / 2000
    expected = torch.softmax(LOGITS[0] / 0.2, dim=-1)  # p ** 5, renormalised: 0.925 for the top token
    assert torch.allclose(cold, expected, atol=0.03)


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    r = SamplingRow(SamplingParams(temperature=0, repetition_penalty=1.5), [0], None)
    assert sample(logits.clone(), [r]).tolist() == [1]  # 2.0 / 1.5 < 1.9
    r = SamplingRow(SamplingParams(temperature=0, repetition_penalty=1.5), [2], None)
    assert sample(logits.clone(), [r]).tolist() == [0]


def test_each_row_draws_from_its_own_generator():
    logits = torch.randn(3, 50)
    a = sample(logits.clone(), [row(seed=1, temperature=1), row(seed=2, temperature=1), row(seed=3, temperature=1)])
    b = sample(logits[1:2].clone(), [row(seed=2, temperature=1)])
    assert a[1] == b[0]  # the batch around it does not change a seeded row's draw
