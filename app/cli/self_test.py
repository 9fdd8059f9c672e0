"""`folio --self-test`: prove an installation works, headless, in well under a minute.

Loads the chat model and answers one prompt, then indexes one document into a throwaway library and
finds it again. Every step prints one line; the exit code is 0 only if all of them passed. The
packaged app runs this in its smoke test, so missing data files or modules show up there.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DOCUMENT = ("The Folio self-test document. The lighthouse on Gull Point was first lit in 1887 and is "
            "kept by volunteers who polish its brass lamp every Sunday.")


def run(model: str | None = None, device: str = "auto") -> int:
    steps: list[tuple[str, Callable[[dict], str]]] = [
        ("load the chat model", lambda s: _load(s, model, device)),
        ("answer a prompt", _answer),
        ("index a document", _index),
        ("search the document", _search),
    ]
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix="folio-self-test-") as tmp:
        state["tmp"] = Path(tmp)
        for name, step in steps:
            start = time.perf_counter()
            try:
                detail = step(state)
            except Exception as e:  # reported, not raised: the point is to say what is broken
                print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
                _close(state)
                return 1
            print(f"ok    {name} ({time.perf_counter() - start:.1f} s) {detail}", flush=True)
        _close(state)
    print("self-test passed", flush=True)
    return 0


def _load(state: dict, model: str | None, device: str) -> str:
    from engine import LLM
    state["llm"] = llm = LLM(model, device=device, num_kv_blocks=64)
    return f"{llm.engine.model_path.name} on {llm.engine.config.device}"


def _answer(state: dict) -> str:
    from engine import SamplingParams
    params = SamplingParams(max_tokens=8, temperature=0)
    out = state["llm"].chat([[{"role": "user", "content": "Say hello."}]], params)[0]
    if not out.token_ids:
        raise RuntimeError("the model produced no tokens")
    return repr(out.text)


def _index(state: dict) -> str:
    from rag import Library
    doc = state["tmp"] / "self-test.txt"
    doc.write_text(DOCUMENT, encoding="utf-8")
    state["library"] = library = Library(state["tmp"] / "library")
    result = library.add([doc]).results[0]
    if result.status != "added":
        raise RuntimeError(result.error or result.status)
    return f"{result.num_chunks} chunk(s)"


def _search(state: dict) -> str:
    hits = state["library"].search("When was the lighthouse first lit?", k=1)
    if not hits or "1887" not in hits[0].text:
        raise RuntimeError("the indexed document was not found")
    return f"score {hits[0].score:.3f}"


def _close(state: dict) -> None:
    if "library" in state:
        state["library"].close()
