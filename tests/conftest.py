import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The app's backends keep KV on disk under the cache dir: tests write theirs to a scratch one.
os.environ.setdefault("FOLIO_CACHE_DIR", tempfile.mkdtemp(prefix="folio-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("FOLIO_CPU_DTYPE", "float32")  # token-exact against transformers in fp32

import pytest
import torch

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin of oil "
    "and a cloth for the great lens. Ships had passed the headland for two hundred years, and the "
    "light had failed only once, during the storm of 1887, when the keeper's daughter rowed across "
    "the bay to fetch a spare wick. The village still tells the story at the harvest festival. "
    "Modern lighthouses run on electricity and are watched from a control room far inland, but the "
    "old tower remains, its brass fittings polished by volunteers who open it to visitors in summer. "
    "Inside, a small museum displays logbooks, weather charts, and a photograph of the daughter, "
    "grey-haired by then, standing beside the lamp she saved. "
)

QUESTIONS = [
    "Hi!",
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about autumn leaves.",
    "List three uses of a paperclip.",
]


def chat_prompts(tokenizer, count: int = 6) -> list[list[int]]:
    """Chat-formatted prompts from a few tokens to about 600, built from real text."""
    prompts = [tokenizer.encode("The quick brown fox jumps")]  # raw text, no template
    for i, q in enumerate(QUESTIONS[: count - 1]):
        context = PASSAGE * i
        msg = f"{context}\n\n{q}" if context else q
        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": msg}]))
    return prompts


@pytest.fixture(scope="session")
def bundled_folder():
    """The bundled model's config and tokenizer (its weights stay in the GGUF file)."""
    from engine.loader import resolve_model
    return resolve_model(None).folder


@pytest.fixture(scope="session")
def hf_model():
    """transformers on the bundled GGUF, with the tensors its own GGUF reader gives (it dequantizes
    as gguf does: the weights we run)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from engine.loader import bundled_model_path
    path = bundled_model_path()
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    model.load_state_dict({k: torch.as_tensor(v).float() for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    return model.eval()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers `generate`, greedy, one prompt at a time (no padding), EOS ignored."""
    from transformers import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[], pad_token_id=0)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=cfg)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="session")
def embedder():
    """One bundled MiniLM for the whole run (loading it takes seconds)."""
    from rag.embedder import Embedder
    return Embedder()


@pytest.fixture
def library(tmp_path, embedder):
    """An empty library in a temp folder, on the shared embedder."""
    from rag import Library
    with Library(tmp_path / "library", embedder=embedder) as lib:
        yield lib


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock.getsockname()[1]


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def both_schedulers(request, monkeypatch):
    """Run the test with synchronous steps and with asynchronous scheduling (a step launched
    before the previous one's tokens are read), whatever the device's default."""
    from engine.config import EngineConfig
    post_init = EngineConfig.__post_init__

    def with_mode(self):
        if self.async_scheduling is None:
            self.async_scheduling = request.param
        post_init(self)
    monkeypatch.setattr(EngineConfig, "__post_init__", with_mode)
    return request.param
