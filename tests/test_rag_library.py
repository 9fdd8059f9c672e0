"""The library end to end on real files, real chromadb and real SQLite: adding, de-duplication,
re-indexing, removal, search with pages, cancel, and bad input that never leaves a trace."""
import threading
from pathlib import Path

import pytest

from conftest import PASSAGE
from doc_fixtures import make_docx, make_encrypted_pdf, make_html, make_pdf
from rag import Library
from rag_checks import check_consistent

MANUAL_PAGES = [
    "Installing the pump. Bolt the base plate to a level concrete pad before connecting any pipes.",
    "Priming. Fill the casing with water through the priming plug until water flows from the vent.",
    "Troubleshooting. If the motor hums but does not turn, the capacitor has failed and must be replaced.",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_add_search_and_cite_pages(library, tmp_path):
    pdf = tmp_path / "pump.pdf"
    make_pdf(pdf, MANUAL_PAGES)
    notes = write(tmp_path / "notes.md", "# Lighthouse\n\n" + PASSAGE)
    report = library.add([pdf, notes])
    assert [r.status for r in report.results] == ["added", "added"] and not report.failed
    docs = {d.source.name: d for d in library.documents()}
    assert docs["pump.pdf"].num_pages == 3 and docs["pump.pdf"].kind == "pdf"
    assert docs["notes.md"].title == "Lighthouse"

    hit = library.search("the motor hums and will not spin", k=1)[0]
    assert hit.source == pdf and hit.page == 3 and "capacitor" in hit.text
    hit = library.search("who rowed across the bay for a wick?", k=1)[0]
    assert hit.source == notes and "daughter" in hit.text
    assert library.search("priming plug", k=2, mode="keyword")[0].page == 2
    only_notes = library.search("capacitor", k=5, doc_ids=[docs["notes.md"].doc_id])
    assert only_notes and all(h.source == notes for h in only_notes)
    check_consistent(library)


def test_folders_duplicates_changes_and_removal(library, tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    a = write(folder / "a.txt", "Apples grow on trees in orchards across the valley.")
    write(folder / "sub" / "b.txt", "Bananas ripen in warm climates near the equator.")
    write(folder / "picture.png", "not a document")  # skipped quietly inside a folder
    write(folder / ".hidden.txt", "never indexed")
    report = library.add([folder])
    assert sorted(r.path.name for r in report.results) == ["a.txt", "b.txt"]

    copy = write(tmp_path / "copy.txt", a.read_text())
    again = library.add([a, copy])
    assert [r.status for r in again.results] == ["unchanged", "duplicate"]
    assert "a.txt" in again.results[1].error

    write(a, "Apricots are dried in the sun on flat roofs.")
    updated = library.add([a]).results[0]
    assert updated.status == "updated"
    assert len(library.documents()) == 2
    assert "Apricots" in library.search("dried apricots", k=1)[0].text
    assert not any("Apples" in h.text for h in library.search("apples orchards", k=5))

    library.remove(updated.doc_id)
    assert [d.source.name for d in library.documents()] == ["b.txt"]
    with pytest.raises(KeyError, match="no document"):
        library.remove(updated.doc_id)
    check_consistent(library)


def test_bad_files_each_get_a_clear_result_and_leave_no_trace(library, tmp_path):
    good = write(tmp_path / "good.txt", PASSAGE)
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)
    encrypted = tmp_path / "locked.pdf"
    make_encrypted_pdf(encrypted, "secret")
    empty = write(tmp_path / "empty.txt", "")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Café crème brûlée, naïve façade, déjà vu.".encode("cp1252"))
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.write(b"lorem ipsum dolor sit amet " * (50 * 1024 * 1024 // 27 + 1))
    unsupported = write(tmp_path / "table.xyz", "a,b,c")
    gone = tmp_path / "gone.txt"
    docx = tmp_path / "table.docx"
    make_docx(docx, ["Quarterly figures"], [["Region", "Sales"], ["North", "1200"]])

    files = [good, corrupt, encrypted, empty, binary, latin, huge, unsupported, gone, docx, good]
    report = library.add(files)
    by_name = {r.path.name: r for r in report.results}
    assert {n: r.status for n, r in by_name.items()} == {
        "good.txt": "added", "corrupt.pdf": "failed", "locked.pdf": "failed", "empty.txt": "failed",
        "binary.txt": "failed", "latin.txt": "added", "huge.txt": "failed", "table.xyz": "failed",
        "gone.txt": "failed", "table.docx": "added"}
    assert len(report.results) == 10  # the file named twice is indexed once
    assert "password" in by_name["locked.pdf"].error
    assert "not found" in by_name["gone.txt"].error
    for r in report.failed:
        assert r.path.name in r.error and "\n" not in r.error and r.doc_id is None
    assert "crème brûlée" in library.search("creme brulee dessert", k=3)[0].text or \
        any("crème" in h.text for h in library.search("Café crème", k=3))
    assert any("North" in h.text and "1200" in h.text for h in library.search("sales in the north region", k=3))
    assert sorted(d.source.name for d in library.documents()) == ["good.txt", "latin.txt", "table.docx"]
    check_consistent(library)


def test_a_file_deleted_between_listing_and_reading(library, tmp_path):
    first = write(tmp_path / "first.txt", PASSAGE)
    second = write(tmp_path / "second.txt", "This file disappears before it is read.")

    def delete_the_next_one(progress):
        if progress.path == first and progress.stage == "reading" and second.exists():
            second.unlink()

    report = library.add([tmp_path], progress=delete_the_next_one)
    assert [(r.path.name, r.status) for r in report.results] == [("first.txt", "added"), ("second.txt", "failed")]
    check_consistent(library)


def test_cancel_stops_between_batches_and_keeps_finished_files(library, tmp_path):
    small = write(tmp_path / "a_small.txt", PASSAGE)
    big = write(tmp_path / "b_big.txt", "\n\n".join(f"Paragraph {i}. " + PASSAGE for i in range(150)))
    later = write(tmp_path / "c_later.txt", "Never reached.")
    cancel = threading.Event()
    stages = []

    def progress(p):
        stages.append((p.path.name, p.stage))
        if p.path == big and p.stage == "embedding":
            cancel.set()

    report = library.add([small, big, later], progress=progress, cancel=cancel)
    assert [r.status for r in report.results] == ["added", "cancelled", "cancelled"]
    assert ("b_big.txt", "cancelled") in stages
    assert sum(1 for name, stage in stages if (name, stage) == ("b_big.txt", "embedding")) == 1  # stopped at once
    assert [d.source for d in library.documents()] == [small]
    check_consistent(library)
    assert library.add([big]).results[0].status == "added"  # nothing half-done blocks a retry


def test_progress_reports_every_file(library, tmp_path):
    files = [write(tmp_path / f"{i}.txt", f"Document {i}. " + PASSAGE) for i in range(3)]
    seen = []
    library.add(files, progress=seen.append)
    assert {(p.file_index, p.file_count) for p in seen} == {(0, 3), (1, 3), (2, 3)}
    finals = [p for p in seen if p.stage == "done"]
    assert [p.path for p in finals] == files and all(p.fraction == 1.0 for p in finals)
    assert all(0.0 <= p.fraction <= 1.0 for p in seen)


def test_a_long_pdf_reports_its_pages_while_it_is_read(library, tmp_path):
    """Reading moves page by page (issue 10: a 36-page PDF sat at one figure for seconds), at most
    once per whole percent, before embedding starts; other formats report reading start and end."""
    pdf = tmp_path / "manual.pdf"
    make_pdf(pdf, [f"Page {n}. " + MANUAL_PAGES[n % 3] for n in range(36)])
    notes = write(tmp_path / "notes.txt", PASSAGE)
    seen = []
    report = library.add([pdf, notes], progress=seen.append)
    assert [r.status for r in report.results] == ["added", "added"]  # reporting pages changes nothing indexed
    assert {d.source.name: d.num_pages for d in library.documents()}["manual.pdf"] == 36
    reading = [p.fraction for p in seen if p.path == pdf and p.stage == "reading"]
    assert reading[0] == 0.0 and reading[-1] == 1.0
    assert [round(f * 36) for f in reading[1:-1]] == list(range(1, 37))  # every page, in order
    first_embedding = next(i for i, p in enumerate(seen) if p.path == pdf and p.stage == "embedding")
    assert all(p.stage == "reading" for p in seen[1:first_embedding])
    assert [p.fraction for p in seen if p.path == notes and p.stage == "reading"] == [0.0, 1.0]

    many = tmp_path / "many.pdf"
    make_pdf(many, [f"Page {n}." for n in range(250)])
    seen.clear()
    library.add([many], progress=seen.append)
    steps = [p.fraction for p in seen if p.stage == "reading"]
    assert len(steps) <= 102 and steps == sorted(steps)  # throttled to whole percents, never backwards


def test_the_pdf_loader_reports_each_page_read_and_other_formats_nothing(tmp_path):
    from rag.loaders import load_document
    pdf = tmp_path / "pump.pdf"
    make_pdf(pdf, MANUAL_PAGES * 3)
    calls = []
    doc = load_document(pdf, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(n, 9) for n in range(1, 10)] and doc.num_pages == 9
    calls.clear()
    load_document(write(tmp_path / "notes.txt", PASSAGE), progress=lambda *a: calls.append(a))
    assert calls == []


def test_cancel_asked_for_while_a_pdf_is_read_cancels_it_as_before(library, tmp_path):
    """Pages now report while they are read; cancelling then still ends the file as cancelled,
    with nothing of it stored, and the files after it are not started."""
    pdf = tmp_path / "manual.pdf"
    make_pdf(pdf, [f"Page {n}. " + MANUAL_PAGES[n % 3] for n in range(20)])
    later = write(tmp_path / "later.txt", PASSAGE)
    cancel = threading.Event()
    stages = []

    def progress(p):
        stages.append((p.path.name, p.stage))
        if p.path == pdf and p.stage == "reading" and 0 < p.fraction < 1:
            cancel.set()

    report = library.add([pdf, later], progress=progress, cancel=cancel)
    assert [r.status for r in report.results] == ["cancelled", "cancelled"]
    assert ("manual.pdf", "cancelled") in stages and ("later.txt", "reading") not in stages
    assert library.documents() == []
    check_consistent(library)


def test_reopening_keeps_the_library(tmp_path, embedder):
    doc = write(tmp_path / "keep.txt", PASSAGE)
    with Library(tmp_path / "lib", embedder=embedder) as lib:
        lib.add([doc])
    with Library(tmp_path / "lib", embedder=embedder) as lib:
        assert [d.source for d in lib.documents()] == [doc]
        assert lib.search("harvest festival story", k=1)[0].source == doc
        check_consistent(lib)


def test_chunks_are_found_by_their_document_title(library, tmp_path):
    """A passage that never names its subject is still found through the title it sits under."""
    doc = tmp_path / "manual.html"
    make_html(doc, "<p>Hold the button for three seconds to descale it.</p>", title="Zephyr kettle manual")
    other = write(tmp_path / "aurora.txt", "Descale the Aurora coffee machine monthly.")
    library.add([doc, other])
    hit = library.search("how do I descale the Zephyr", k=1, mode="keyword")[0]
    assert hit.text == "Hold the button for three seconds to descale it."  # shown without the heading


def test_one_process_at_a_time(tmp_path, embedder):
    """A second open (another app window, a `folio index` while the app runs) is refused clearly
    instead of sweeping away the first one's documents in progress."""
    from rag import LibraryError
    with Library(tmp_path / "lib", embedder=embedder):
        with pytest.raises(LibraryError, match="open in another Folio"):
            Library(tmp_path / "lib", embedder=embedder)
    with Library(tmp_path / "lib", embedder=embedder) as again:  # closing released it
        assert again.documents() == []


def test_a_folder_that_cannot_be_a_library_is_a_clear_error(tmp_path, embedder):
    from rag import LibraryError
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LibraryError, match="cannot use the library folder"):
        Library(tmp_path / "file", embedder=embedder)


def test_an_unforeseen_parser_failure_fails_only_that_file(library, tmp_path, monkeypatch):
    import rag.loaders as loaders

    def choke(path, max_chars):
        raise RuntimeError("parser exploded")
    monkeypatch.setitem(loaders._LOADERS, "html", choke)
    page = tmp_path / "page.html"
    page.write_text("<p>hello</p>")
    good = write(tmp_path / "good.txt", PASSAGE)
    report = library.add([page, good])
    assert [r.status for r in report.results] == ["failed", "added"]
    assert report.results[0].error == "page.html: could not be read (RuntimeError: parser exploded)"
    check_consistent(library)


def test_a_file_changed_into_a_copy_of_another_drops_its_old_version(library, tmp_path):
    a = write(tmp_path / "a.txt", "Apples grow on trees in orchards across the valley.")
    b = write(tmp_path / "b.txt", "Bananas ripen in warm climates near the equator.")
    library.add([a, b])
    write(b, a.read_text())
    result = library.add([b]).results[0]
    assert result.status == "duplicate" and "a.txt" in result.error
    assert [d.source for d in library.documents()] == [a]  # b's banana text is no longer citable
    check_consistent(library)


def test_an_empty_library_answers_a_search_without_embedding_the_question(tmp_path, embedder):
    """With no document the question is not embedded (on a first launch that would load and
    convert the embedder while the answer computes); once one is indexed, it is, and is found."""
    asked = []

    class Counting:  # the shared embedder, counting what is embedded
        def __getattr__(self, name):
            return getattr(embedder, name)

        def embed(self, texts, progress=None):
            asked.append(list(texts))
            return embedder.embed(texts, progress)

    with Library(tmp_path / "library", embedder=Counting()) as lib:
        assert lib.is_empty()
        for mode in ("hybrid", "dense", "keyword", "rrf"):
            assert lib.search("where is the spare key?", mode=mode) == []
        assert asked == []
        lib.add([write(tmp_path / "notes.txt", "The spare key for the shed hangs under the eaves.")])
        assert not lib.is_empty()
        asked.clear()
        assert "eaves" in lib.search("where is the spare key?", k=1)[0].text
        assert asked == [["where is the spare key?"]]
