"""Prompts over documents: stable text first and byte-identical across chats, so the engine shares
the document's KV blocks; citations map back to document and page."""
import pytest

from conftest import PASSAGE
from doc_fixtures import make_pdf
from engine import SamplingParams
from engine.llm_engine import LLMEngine
from rag import build_prompt, cited_sources
from rag.context import SOURCES_INSTRUCTION

PAGES = [
    "Chapter one. The harbour master keeps the tide tables in a blue ledger on the office shelf.",
    "Chapter two. Fishing boats must report their catch to the harbour master before noon each day.",
    "Chapter three. In winter the harbour freezes and the ferry to the island stops running.",
]


@pytest.fixture
def indexed(library, tmp_path):
    pdf = tmp_path / "harbour.pdf"
    make_pdf(pdf, PAGES)
    story = tmp_path / "lighthouse.txt"
    story.write_text(PASSAGE * 3, encoding="utf-8")
    report = library.add([pdf, story])
    assert not report.failed
    return {r.path.name: r.doc_id for r in report.results}


def test_order_and_byte_identical_stable_part(library, indexed):
    first = build_prompt("Who keeps the tide tables?", library=library, pinned_doc_ids=[indexed["harbour.pdf"]],
                         search=False)
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
    second = build_prompt("When does the ferry stop?", history, library=library,
                          pinned_doc_ids=[indexed["harbour.pdf"]], search=False)
    assert first.messages[0] == second.messages[0]  # system + pinned document, byte for byte
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
    assert second.messages[-1]["content"] == "When does the ferry stop?"
    system = second.messages[0]["content"]
    assert system.index(SOURCES_INSTRUCTION) < system.index("tide tables") < system.index("ferry")
    assert [(s.number, s.page, s.pinned) for s in second.sources] == [(1, 1, True), (2, 2, True), (3, 3, True)]

    mixed = build_prompt("What did the keeper's daughter do?", library=library,
                         pinned_doc_ids=[indexed["harbour.pdf"]], search=True, k=2)
    assert mixed.messages[0]["content"].startswith(system)  # retrieved chunks come after the pinned text
    retrieved = [s for s in mixed.sources if not s.pinned]
    assert retrieved and all(s.source.name == "lighthouse.txt" for s in retrieved)
    assert [s.number for s in mixed.sources] == list(range(1, len(mixed.sources) + 1))


def test_retrieved_chunks_come_in_document_order(library, indexed):
    prompt = build_prompt("harbour winter ferry tide tables catch noon", library=library, k=3)
    positions = [(str(s.source), s.start) for s in prompt.sources]
    assert len(positions) >= 2 and positions == sorted(positions)


def test_a_pinned_document_too_big_is_searched_instead(library, indexed):
    prompt = build_prompt("Who rowed across the bay?", library=library, pinned_doc_ids=[indexed["lighthouse.txt"]],
                          search=False, max_context_tokens=450)
    assert prompt.sources and not any(s.pinned for s in prompt.sources)
    assert all(s.source.name == "lighthouse.txt" for s in prompt.sources)


def test_history_keeps_the_most_recent_turns_that_fit():
    history = []
    for i in range(20):
        history += [{"role": "user", "content": f"question {i} " + "word " * 40},
                    {"role": "assistant", "content": f"answer {i} " + "word " * 40}]
    prompt = build_prompt("last question", history, max_context_tokens=400, count_tokens=lambda s: len(s.split()))
    kept = prompt.messages[1:-1]
    assert 2 <= len(kept) < len(history) and kept == history[-len(kept):]
    assert kept[0]["role"] == "user"


def test_citations_map_to_document_and_page(library, indexed):
    prompt = build_prompt("Who keeps the tide tables?", library=library, pinned_doc_ids=[indexed["harbour.pdf"]],
                          search=False)
    cited = cited_sources("The harbour master does [1], and boats report by noon [2, 1]. See also [9].",
                          prompt.sources)
    assert [(s.source.name, s.page) for s in cited] == [("harbour.pdf", 1), ("harbour.pdf", 2)]
    assert cited[0].label == "harbour.pdf, page 1" and "tide tables" in cited[0].snippet


def test_two_chats_over_one_pinned_document_share_its_blocks(library, indexed):
    engine = LLMEngine(num_kv_blocks=256)
    count = lambda s: len(engine.tokenizer.encode(s))  # noqa: E731
    bs = engine.config.block_size
    prompts = [build_prompt(q, library=library, pinned_doc_ids=[indexed["harbour.pdf"], indexed["lighthouse.txt"]],
                            search=False, count_tokens=count)
               for q in ("Who keeps the tide tables?", "When does the ferry stop running?")]
    ids = [engine.tokenizer.apply_chat_template(p.messages) for p in prompts]
    system_text = engine.tokenizer.hf.apply_chat_template(prompts[0].messages[:1], tokenize=False)
    stable = engine.tokenizer.hf.encode(system_text, add_special_tokens=False)  # [system][pinned documents]
    assert ids[0][:len(stable)] == ids[1][:len(stable)] == stable
    full_blocks = len(stable) // bs
    assert full_blocks >= 8

    params = SamplingParams(max_tokens=4, temperature=0)
    first = engine.add_request(ids[0], params)
    while engine.scheduler.running == [] or engine.scheduler.running[0].num_computed_tokens < len(ids[0]):
        engine.step()
    second = engine.add_request(ids[1], params)
    outputs, shared_seen = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        if len(engine.scheduler.running) == 2:
            shared_seen = max(shared_seen, engine.stats()["blocks_shared"])
    assert shared_seen >= full_blocks  # every full block of system + documents held once, by both
    assert outputs[first].metrics.num_cached_tokens == 0
    assert outputs[second].metrics.num_cached_tokens >= full_blocks * bs
    assert engine.stats()["blocks_used"] == 0
