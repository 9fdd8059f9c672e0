"""Random GGUF tensors of a packed type, for the quantized-weight tests."""
import numpy as np

from kernels.quant import GGUF_BLOCK


def random_blocks(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    """A GGUF tensor of random blocks: random quant bytes, random (finite, small) fp16 scales."""
    rng = np.random.default_rng(seed)
    per, size = GGUF_BLOCK[qtype]
    raw = rng.integers(0, 256, size=(n, k // per, size), dtype=np.uint8)

    def put(offset: int, count: int = 1) -> None:
        values = (rng.standard_normal((n, k // per, count)) * 0.02).astype(np.float16)
        raw[:, :, offset:offset + 2 * count] = values.view(np.uint8)
    if qtype in ("Q4_0", "Q5_0", "Q8_0"):
        put(0)
    elif qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"):
        put(0, 2)  # d and the minimum (dmin for the K types)
    elif qtype == "Q6_K":
        put(208)
    return raw.reshape(n, -1)
