"""Chunks are exact slices of the document, fit the embedder, overlap, and keep their pages."""
from pathlib import Path

from hypothesis import given, settings, strategies as st

from rag.chunking import ChunkingConfig, chunk_document
from rag.embedder import Embedder
from rag.loaders import LoadedDocument, Section


def words(text: str) -> int:
    return len(text.split())


def document(pages: list[str]) -> LoadedDocument:
    text, sections = "", []
    for number, page in enumerate(pages, start=1):
        sections.append(Section(len(text), len(text) + len(page), number, None))
        text += page
    return LoadedDocument(Path("/docs/book.pdf"), "pdf", "book", text, sections, len(pages))


def check_chunks(doc: LoadedDocument, chunks, config: ChunkingConfig, count) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == doc.text[c.start:c.end] and c.text == c.text.strip() and c.text
        assert count(c.text) <= config.max_tokens and len(c.text) <= config.max_chars
        page = next(s.page for s in doc.sections if s.start <= c.start < s.end)
        assert c.page == page
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(doc.text) if not ch.isspace())  # nothing dropped
    assert all(a.start < b.start for a, b in zip(chunks, chunks[1:]))  # in reading order


word = st.sampled_from(["alpha", "beta", "gamma", "delta", "lighthouse", "keeper", "x" * 40])
sentence = st.tuples(st.lists(word, min_size=1, max_size=30), st.sampled_from([". ", "? ", ".\n", ".\n\n"]))
page_text = st.lists(sentence.map(lambda t: " ".join(t[0]) + t[1]), max_size=25).map("".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(page_text, min_size=1, max_size=5), st.integers(8, 60), st.integers(0, 7))
def test_chunks_cover_and_fit(pages, max_tokens, overlap):
    config = ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap, min_tokens=max_tokens // 2,
                            max_chars=max_tokens * 30)
    doc = document(pages)
    check_chunks(doc, chunk_document(doc, words, config), config, words)


def test_neighbours_overlap_within_a_page_and_restart_at_a_new_one():
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(60)]
    doc = document([" ".join(sentences[:40]), " ".join(sentences[40:])])
    config = ChunkingConfig(max_tokens=40, overlap_tokens=12, min_tokens=20)
    chunks = chunk_document(doc, words, config)
    check_chunks(doc, chunks, config, words)
    same_page = [(a, b) for a, b in zip(chunks, chunks[1:]) if a.page == b.page]
    assert same_page and all(b.start < a.end for a, b in same_page)  # shared trailing sentences
    first_on_2 = next(c for c in chunks if c.page == 2)
    assert first_on_2.start == doc.sections[1].start  # a new page starts a new chunk


def test_a_single_enormous_word_is_cut():
    doc = document(["prefix " + "Z" * 5000 + " suffix"])
    embedder = Embedder()
    config = ChunkingConfig(max_tokens=50, overlap_tokens=5, min_tokens=10, max_chars=400)
    chunks = chunk_document(doc, embedder.count_tokens, config)
    check_chunks(doc, chunks, config, embedder.count_tokens)
    assert len(chunks) >= 5000 // 400
