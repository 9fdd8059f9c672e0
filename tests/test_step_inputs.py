"""A step's inputs on the host: which steps a prefill graph can replay, and the staging buffer
that moves them to the device (right values, aligned views)."""
import numpy as np
import torch

from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_inputs import Sample, StagingBuffers, build_step


def test_staged_views_hold_the_arrays_and_start_16_bytes_aligned():
    """Triton compiles one kernel variant per pointer alignment: a view at an odd int64 offset
    would make a batch of another parity compile kernels in the middle of a step."""
    staging = StagingBuffers(64, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for step in range(3):
        staging.next_step()
        arrays = [rng.integers(-5, 100, size=n) for n in (3, 1, 0, 7, 2)] + [rng.integers(0, 9, size=(2, 3))]
        views = staging.upload(*arrays) + staging.upload(np.arange(5))
        arrays.append(np.arange(5))
        for a, v in zip(arrays, views):
            assert v.shape == a.shape and v.tolist() == a.tolist()
            assert v.data_ptr() % 16 == 0
    big = staging.upload(np.arange(61), np.arange(9))  # past the capacity: a buffer of its own
    assert [v.tolist() for v in big] == [list(range(61)), list(range(9))]
    assert all(v.data_ptr() % 16 == 0 for v in big)


def _seq(i: int, prompt: int, computed: int, generated: int = 0, row: int | None = None) -> Sequence:
    seq = Sequence(i, f"r{i}", list(range(1, prompt + 1)), SamplingParams(max_tokens=4))
    seq.output_token_ids = list(range(generated))
    seq.num_computed_tokens = computed
    seq.block_table = list(range(10 * i, 10 * i + 8))
    seq.row = i if row is None else row
    return seq


def test_prefill_only_steps_are_those_a_prefill_graph_can_replay():
    """Every sequence ends its prompt in the step and samples once, in batch order; a decode row,
    a chunk that stops short of the prompt's end, or a fork (two samples of one prompt) is not."""
    def step(seqs, lengths, num_decode=0, forks=0):
        batch = ScheduledBatch(list(seqs), list(lengths), num_decode=num_decode)
        samples = [Sample(s, i) for i, s in enumerate(x for x, n in zip(seqs, lengths)
                                                      if x.num_computed_tokens + n == x.num_total_tokens)]
        samples += [Sample(samples[0].seq, 0)] * forks
        return build_step(batch, samples, 16)

    a, b = _seq(1, 40, 32), _seq(2, 70, 64)
    assert step([a, b], [8, 6]).is_prefill_only
    assert not step([a, b], [8, 4]).is_prefill_only  # b's chunk stops short of its prompt's end
    assert not step([a, b], [8, 6], forks=1).is_prefill_only
    decoding = _seq(3, 20, 20, generated=1)
    assert not step([decoding, a], [1, 8], num_decode=1).is_prefill_only
