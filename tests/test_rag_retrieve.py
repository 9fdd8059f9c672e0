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
    """The issue's numbers: BM25 23.7 for the right passage against 10.8 for the next, while dense
    search puts it 45th of 50; ten passages sit mid-way in both lists."""
    cosine = {i: 0.60 - 0.005 * i for i in range(50)}  # dense: 0 best ... 49 worst, a flat list
    cosine[100] = cosine[44]                            # the right passage, 45th by cosine
    bm25 = {100: 23.7}
    bm25 |= {i: 10.8 - 0.2 * i for i in range(10, 20)}  # mid-way in dense, next best in BM25
    by_rank = fuse([sorted(bm25, key=bm25.get, reverse=True), sorted(cosine, key=cosine.get, reverse=True)])
    assert 100 not in [i for i, _ in by_rank[:10]]      # why rank fusion was replaced
    by_score = fuse_scores(cosine, bm25)
    assert by_score[0][0] == 100


def test_score_fusion_lets_neither_ranker_push_out_what_the_other_is_sure_of():
    cosine = {1: 0.82, 2: 0.45, 3: 0.44, 4: 0.43, 5: 0.42, 6: 0.41}  # dense is sure of chunk 1
    bm25 = {2: 4.1, 3: 4.0, 4: 3.9, 5: 3.8, 1: 3.6, 6: 3.5}         # keyword is not sure of anything
    assert fuse_scores(cosine, bm25)[0][0] == 1
    flat = {i: 0.5 for i in cosine}                                 # a ranker with nothing to say moves nothing
    assert [i for i, _ in fuse_scores(flat, bm25)] == sorted(bm25, key=bm25.get, reverse=True)
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
