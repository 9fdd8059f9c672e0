"""A step's host arrays reach the device through one staging buffer: right values, aligned views."""
import numpy as np
import torch

from engine.step_inputs import StagingBuffers


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
