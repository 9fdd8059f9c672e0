"""Ranking stages of rag.retrieve, each on its own (question words, score fusion, the candidates'
missing scores) and end to end on a real library where rank fusion loses a decisive keyword hit."""
from pathlib import Path

import numpy as np
import pytest

from rag.eval.corpora import package_description
from rag.retrieve import fuse, fuse_scores, keyword_query, search

SHED_NOTE = ("House notes. The spare key for the shed is kept under the blue flowerpot by the back door. "
             "The bins go out on Tuesday evening. The boiler service is booked for March.")


def test_question_words_are_left_out_of_the_keyword_query():
    assert keyword_query("How do I make xz use every CPU core?") == "xz every CPU core"
    assert keyword_query("Where is the spare key for the shed kept?") == "spare key shed kept"
    assert keyword_query("What is it?") == "What is it"  # nothing but question words: all of them stay


def test_a_decisive_keyword_first_place_survives_score_fusion_but_not_rank_fusion():
    """The issue's numbers: BM25 23.7 for the right passage against 10.8 for the next; dense search
    puts it 23rd of 50, and ten passages are in the top ten of both lists, just behind it in BM25."""
    cosine = {i: 0.60 - 0.002 * i for i in range(50)}  # dense: 0 best ... 49 worst, a flat list
    cosine[100] = cosine[22]                            # the right passage, 23rd by cosine
    bm25 = {100: 23.7}
    bm25 |= {i: 10.8 - 0.2 * i for i in range(10)}      # the dense top ten, next best in BM25
    by_rank = fuse([sorted(bm25, key=bm25.get, reverse=True), sorted(cosine, key=cosine.get, reverse=True)])
    assert 100 not in [i for i, _ in by_rank[:10]]      # why rank fusion was replaced
    by_score = fuse_scores(cosine, bm25)
    assert by_score[0][0] == 100


def test_score_fusion_lets_neither_ranker_push_out_what_the_other_is_sure_of():
    cosine = {1: 0.82, 2: 0.45, 3: 0.44, 4: 0.43, 5: 0.42, 6: 0.41}  # dense is sure of chunk 1
    bm25 = {2: 4.1, 3: 4.0, 4: 3.9, 5: 3.8, 1: 3.6, 6: 3.5}         # keyword is not sure of anything
    assert fuse_scores(cosine, bm25)[0][0] == 1
    flat = {i: 0.5 for i in cosine}                                 # a ranker with nothing to say moves nothing:
    assert [i for i, _ in fuse_scores(flat, bm25)][:3] == [2, 3, 4]  # BM25's order, for those above its mean
    assert fuse_scores({}, {}) == []


def test_fusion_weights_the_dense_ranker_as_configured():
    cosine = {1: 0.9, 2: 0.5, 3: 0.4}
    bm25 = {1: 1.0, 2: 9.0, 3: 1.0}
    assert fuse_scores(cosine, bm25, dense_weight=0.9)[0][0] == 1
    assert fuse_scores(cosine, bm25, dense_weight=0.1)[0][0] == 2


def test_rank_fusion_ranks_agreement_first_and_breaks_ties_by_rank_not_storage_order():
    assert [i for i, _ in fuse([[4, 8, 9], [9, 1]])] == [9, 4, 8, 1]  # in both lists beats first in one
    assert [i for i, _ in fuse([[9], [2]])] == [9, 2]  # equal scores: the earlier list wins, not the lower id
    assert [i for i, _ in fuse([[3, 9], [2]])] == [3, 2, 9]


def test_every_candidate_gets_both_scores(library, tmp_path):
    """A chunk only keyword search proposed is scored by its stored vector, and one only dense
    search proposed by BM25 over the whole index: what fusion sees for it is what either ranker
    alone would say."""
    docs = []
    for n, text in enumerate(["Pumps move water uphill.", "The lighthouse keeper rowed across the bay.",
                              "Tomatoes need full sun and steady watering."]):
        docs.append(tmp_path / f"doc{n}.txt")
        docs[-1].write_text(text, encoding="utf-8")
    library.add(docs)
    store = library._store
    ids = [i for i, _ in store.keyword("pumps OR lighthouse OR tomatoes", 10)]
    ids += [i for i, _ in store.nearest(library.embedder.embed(["water"])[0], 10) if i not in ids]
    vector = library.embedder.embed(["a boat on the bay"])[0]
    exact = dict(store.nearest(vector, 10))
    assert store.similarities(vector, ids) == pytest.approx(exact, abs=1e-5)
    all_bm25 = dict(store.keyword("water sun", 10))
    assert dict(store.keyword("water sun", 10, within=ids[:2])) == {i: all_bm25[i] for i in ids[:2] if i in all_bm25}
    assert store.keyword("water sun", 10, within=[]) == []


@pytest.fixture(scope="module")
def shed_library(tmp_path_factory, embedder):
    """notes.txt among 40 package READMEs as HTML pages (the issue's "folder of 101 HTML files")."""
    from rag import Library
    folder = tmp_path_factory.mktemp("shed")
    (folder / "notes.txt").write_text(SHED_NOTE, encoding="utf-8")
    names = ["pip", "setuptools", "numpy", "requests", "urllib3", "idna", "certifi", "fastapi", "starlette",
             "uvicorn", "pydantic", "httpx", "httpcore", "h11", "anyio", "sniffio", "click", "rich", "pygments",
             "markdown-it-py", "mdurl", "jinja2", "markupsafe", "packaging", "platformdirs", "filelock", "tqdm",
             "pyyaml", "typing-extensions", "attrs", "jsonschema", "sympy", "mpmath", "networkx", "fsspec",
             "huggingface-hub", "safetensors", "tokenizers", "transformers", "chromadb"]
    for name in names:
        found = package_description(name)
        if found:
            body = "".join(f"<p>{line}</p>\n" for line in found[0].splitlines() if line.strip())
            (folder / f"{name}.html").write_text(f"<html><head><title>{name}</title></head><body>{body}</body></html>",
                                                 encoding="utf-8")
    lib = Library(folder / "library", embedder=embedder)
    lib.add([folder])
    if len(lib.documents()) < 21:
        pytest.skip("too few package READMEs on this machine to build the distractors")
    yield lib
    lib.close()


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_the_spare_key_for_the_shed_is_found_among_many_html_pages(shed_library, mode):
    hits = shed_library.search("Where is the spare key for the shed kept?", k=5, mode=mode)
    assert Path(hits[0].source).name == "notes.txt" and "flowerpot" in hits[0].text


def test_hybrid_search_reports_the_fused_score_and_every_hits_similarity(shed_library):
    hits = search(shed_library._store, shed_library.embedder.embed, "spare key for the shed", 5, "hybrid")
    assert len(hits) == 5 and all(h.similarity is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.isfinite([h.score for h in hits]).all()


def _sections(n: int) -> str:
    """A Markdown manual of `n` short sections, each its own chunk (about 400 characters)."""
    return "\n\n".join(f"## Step {i}\n\nStep {i} of the pump manual. " + " ".join(
        f"Turn valve {i}-{j} a quarter clockwise and wait for the gauge to settle." for j in range(5))
        for i in range(n))


def test_a_hit_is_the_passage_around_its_chunk(library, tmp_path):
    doc = tmp_path / "manual.md"
    doc.write_text(_sections(12), encoding="utf-8")
    library.add([doc])
    store = library._store
    rows = store._query("SELECT doc_id, start, end, page, text FROM chunks ORDER BY chunk_index")
    assert len(rows) == 12 and all(len(r[4]) < 500 for r in rows)
    full = library.document_text(rows[0][0])[0]
    doc_id, start, end, page, text = rows[6]
    a, b, window = store.passage(doc_id, start, end, page, 1000)
    assert window == full[a:b] and a <= start and end <= b and 900 <= len(window) <= 1000
    assert (full[a - 1].isspace() or a == 0) and (b == len(full) or full[b].isspace())  # whole words
    assert abs((start - a) - (b - end)) < 120  # centred on the chunk
    a, b, window = store.passage(doc_id, rows[0][1], rows[0][2], None, 1000)
    assert a == rows[0][1] and 900 <= len(window) <= 1000  # at the start: all the room goes after it
    a, b, window = store.passage(doc_id, start, end, page, 10)
    assert (a, b, window) == (start, end, text)  # never less than the chunk


def test_a_pdf_passage_stays_on_its_page(library, tmp_path):
    pdf = tmp_path / "pump.pdf"
    from doc_fixtures import make_pdf
    make_pdf(pdf, ["Page one. " + "Open the inlet valve slowly. " * 5, "Page two. Close the drain cock firmly.",
                   "Page three. " + "Check the seals monthly. " * 5])
    library.add([pdf])
    hit = library.search("close the drain cock", k=1)[0]
    assert hit.page == 2 and hit.text == "Page two. Close the drain cock firmly."


def test_no_hit_repeats_a_chunk_already_shown_in_a_better_hits_passage(library, tmp_path):
    doc = tmp_path / "manual.md"
    doc.write_text(_sections(12), encoding="utf-8")
    library.add([doc])
    store = library._store
    spans = {r[0]: (r[1], r[2]) for r in store._query("SELECT chunk_index, start, end FROM chunks")}
    hits = library.search("turn the valve a quarter clockwise", k=5)
    assert len(hits) == 5
    for n, hit in enumerate(hits):
        chunk_start, chunk_end = spans[hit.chunk_index]
        assert hit.start <= chunk_start and chunk_end <= hit.end
        assert not any(h.start <= chunk_start and chunk_end <= h.end for h in hits[:n])
