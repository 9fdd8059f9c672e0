"""Checks shared by the library tests."""
from rag import Library


def check_consistent(lib: Library) -> None:
    """Every ready document has all its chunks searchable by vector and by keyword, and nothing
    else is stored (no half-indexed leftovers)."""
    store = lib._store
    docs = {d.doc_id: d for d in lib.documents()}
    rows = store._query("SELECT doc_id, COUNT(*) FROM chunks GROUP BY doc_id")
    assert dict(rows) == {d: docs[d].num_chunks for d in docs}
    assert store._query("SELECT COUNT(*) FROM documents WHERE state != 'ready'") == [(0,)]
    vectors = store._vectors.get(include=["metadatas"])
    per_doc: dict[str, int] = {}
    for m in vectors["metadatas"]:
        per_doc[m["doc_id"]] = per_doc.get(m["doc_id"], 0) + 1
    assert per_doc == {d: docs[d].num_chunks for d in docs}
    assert store._query("SELECT COUNT(*) FROM chunk_terms") == [(sum(per_doc.values()),)]
