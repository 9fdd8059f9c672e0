"""rag.loaders on real files of every format, good and bad, built in tmp_path by tests/doc_fixtures."""
from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import pytest
from doc_fixtures import (
    make_docx,
    make_encrypted_pdf,
    make_epub,
    make_html,
    make_pdf,
    pdf_bytes,
)

from rag.loaders import (
    MAX_TEXT_CHARS,
    SUPPORTED_SUFFIXES,
    CorruptDocument,
    DocumentError,
    DocumentTooLarge,
    EmptyDocument,
    LoadedDocument,
    MissingDocument,
    UnsupportedDocument,
    is_supported,
    load_document,
)


def assert_sections_tile(doc: LoadedDocument) -> None:
    """Sections are in order, do not overlap, leave no gaps and cover the whole text."""
    assert doc.sections, "a document always has at least one section"
    assert doc.sections[0].start == 0
    assert doc.sections[-1].end == len(doc.text)
    for before, after in zip(doc.sections, doc.sections[1:]):
        assert before.end == after.start, (before, after)
    assert all(s.start <= s.end for s in doc.sections)


def section_texts(doc: LoadedDocument) -> list[str]:
    return [doc.text[s.start:s.end].strip() for s in doc.sections]


def assert_refused(path: Path, error: type[DocumentError], *words: str, **kwargs) -> DocumentError:
    """Loading raises exactly `error` with a one-line message naming the file and containing `words`."""
    with pytest.raises(error) as caught:
        load_document(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert path.name in message
    for word in words:
        assert word in message.lower(), message
    return caught.value


# ------------------------------------------------------------------------------ text formats

def test_plain_text_loads_whole_with_file_name_as_title(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first line\r\nsecond line\rthird line\n")
    doc = load_document(path)
    assert (doc.kind, doc.title, doc.num_pages) == ("text", "notes.txt", None)
    assert doc.text == "first line\nsecond line\nthird line\n"
    assert [(s.start, s.end, s.page, s.title) for s in doc.sections] == [(0, len(doc.text), None, None)]


@pytest.mark.parametrize("name,kind", [("main.py", "code"), ("config.YAML", "code"), ("guide.rst", "text"),
                                       ("lib.rs", "code"), ("README.markdown", "markdown")])
def test_kind_follows_the_extension(tmp_path, name, kind):
    path = tmp_path / name
    path.write_text("def answer():\n    return 42\n")
    doc = load_document(path)
    assert doc.kind == kind
    assert doc.text == "def answer():\n    return 42\n"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be"])
def test_unicode_with_byte_order_mark_loads(tmp_path, encoding):
    text = "Grüße aus Köln — 東京 ✓\n"
    path = tmp_path / "greeting.txt"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    assert load_document(path).text == text


def test_cp1252_text_loads_with_its_characters(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Café – naïve “quoted” 50€\n".encode("cp1252"))
    assert load_document(path).text == "Café – naïve “quoted” 50€\n"


def test_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_bytes(b"caf\xe9 \x81 end\n")
    assert load_document(path).text == "café \x81 end\n"


def test_markdown_sections_split_at_headings_outside_code(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text("Intro line.\n\n# User Guide\n\nWelcome.\n\n```sh\n# a shell comment, not a heading\n```\n\n"
                    "## Install ##\n\nRun it.\n\n#### Detail\n\nSmall print.\n\n### Usage\n\nAsk.\n")
    doc = load_document(path)
    assert (doc.kind, doc.title) == ("markdown", "User Guide")
    assert [s.title for s in doc.sections] == [None, "User Guide", "Install", "Usage"]
    texts = section_texts(doc)
    assert texts[0] == "Intro line."
    assert "# a shell comment" in texts[1]
    assert texts[2].startswith("## Install ##") and texts[2].endswith("Small print.")
    assert texts[3] == "### Usage\n\nAsk."
    assert_sections_tile(doc)


def test_markdown_without_level_one_heading_is_titled_by_file_name(tmp_path):
    path = tmp_path / "todo.md"
    path.write_text("## Monday\n\n- call Ann\n")
    doc = load_document(path)
    assert doc.title == "todo.md"
    assert [(s.start, s.title) for s in doc.sections] == [(0, "Monday")]


# ---------------------------------------------------------------------------------------- PDF

def test_pdf_has_one_section_per_page_with_exact_text(tmp_path):
    long_page = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin of oil "
                 "and a cloth for the great lens (and a spare wick). ") * 12
    path = tmp_path / "report.pdf"
    expected = make_pdf(path, ["Page one says hello.", long_page, "Café – 50€, naïve."], title="Quarterly Report")
    doc = load_document(path)
    assert (doc.kind, doc.title, doc.num_pages) == ("pdf", "Quarterly Report", 3)
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert section_texts(doc) == expected
    assert expected[1].count("\n") >= 10, "the long page is drawn as many lines"
    assert doc.text == "\n\n".join(expected)
    assert_sections_tile(doc)


def test_pdf_without_title_metadata_is_titled_by_file_name(tmp_path):
    path = tmp_path / "scan2text.pdf"
    make_pdf(path, ["Some text."])
    assert load_document(path).title == "scan2text.pdf"


def test_pdf_pages_without_text_keep_their_page_numbers(tmp_path):
    path = tmp_path / "gaps.pdf"
    make_pdf(path, ["", "Second page.", "", "Fourth page."])
    doc = load_document(path)
    assert [s.page for s in doc.sections] == [1, 2, 3, 4]
    assert section_texts(doc) == ["", "Second page.", "", "Fourth page."]
    assert doc.text == "Second page.\n\nFourth page."
    assert_sections_tile(doc)


def test_pdf_with_no_text_layer_says_it_needs_ocr(tmp_path):
    path = tmp_path / "scan.pdf"
    make_pdf(path, ["", ""])
    assert_refused(path, EmptyDocument, "no text layer", "ocr")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_pdf_is_corrupt(tmp_path, damage):
    path = tmp_path / "broken.pdf"
    good = pdf_bytes(["Hello page one", "Page two"])
    path.write_bytes(os.urandom(4096) if damage == "garbage" else good[: len(good) // 2])
    assert_refused(path, CorruptDocument, "damaged")


def test_password_protected_pdf_says_so(tmp_path):
    path = tmp_path / "secret.pdf"
    make_encrypted_pdf(path, "hunter2")
    assert_refused(path, CorruptDocument, "password-protected")


def test_pdf_text_over_the_limit_is_too_large(tmp_path):
    path = tmp_path / "big.pdf"
    make_pdf(path, ["word " * 100] * 5)
    assert load_document(path, max_chars=5000).num_pages == 5
    assert_refused(path, DocumentTooLarge, "too large", "1,000", max_chars=1000)


def test_pdf_loads_from_several_threads(tmp_path):
    path = tmp_path / "shared.pdf"
    expected = make_pdf(path, [f"Page {i} of the shared file." for i in range(20)])
    results: list[str] = []

    def load() -> None:
        results.append(load_document(path).text)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["\n\n".join(expected)] * 4


def test_loading_leaves_no_file_open(tmp_path):
    make_pdf(tmp_path / "a.pdf", ["One.", "Two."])
    make_docx(tmp_path / "a.docx", ["Para."])
    make_epub(tmp_path / "a.epub", [("One", "<p>x</p>")])
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 nonsense")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        for name in ["a.pdf", "a.docx", "a.epub", "a.txt"]:
            load_document(tmp_path / name)
        with pytest.raises(CorruptDocument):
            load_document(tmp_path / "bad.pdf")
    assert len(os.listdir("/proc/self/fd")) == before


# --------------------------------------------------------------------------------------- DOCX

def test_docx_keeps_body_order_tables_and_heading_sections(tmp_path):
    path = tmp_path / "plan.docx"
    make_docx(path, ["Opening words.", ("Heading 1", "Budget"), "Costs are below.", ("Heading 2", "Notes"), "The end."],
              [["Item", "Cost"], ["Paper", "12.50"], ["Ink", "30"]], table_at=3, title="Project Plan")
    doc = load_document(path)
    assert (doc.kind, doc.title, doc.num_pages) == ("docx", "Project Plan", None)
    assert [s.title for s in doc.sections] == [None, "Budget", "Notes"]
    assert section_texts(doc) == ["Opening words.",
                                  "Budget\n\nCosts are below.\n\nItem | Cost\nPaper | 12.50\nInk | 30",
                                  "Notes\n\nThe end."]
    assert all(s.page is None for s in doc.sections)
    assert_sections_tile(doc)


def test_docx_title_falls_back_to_first_heading(tmp_path):
    path = tmp_path / "memo.docx"
    make_docx(path, ["Dear all,", ("Heading 1", "Office Move")])
    assert load_document(path).title == "Office Move"


def test_docx_merged_cell_text_appears_once(tmp_path):
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    merged = table.cell(0, 0).merge(table.cell(0, 1))
    merged.text = "Spanning header"
    table.cell(0, 2).text = "Last"
    for i, text in enumerate(["a", "b", "c"]):
        table.cell(1, i).text = text
    path = tmp_path / "merged.docx"
    document.save(str(path))
    assert load_document(path).text == "Spanning header | Last\na | b | c"


def test_docx_reads_tabs_breaks_links_and_rows_merged_down(tmp_path):
    """What python-docx gave, read straight from the XML: a page break is no text, a cell merged
    down repeats in each row it spans, a table inside a cell is not read."""
    import docx
    from docx.enum.text import WD_BREAK
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    paragraph = document.add_paragraph("Tab")
    paragraph.add_run().add_tab()
    paragraph.add_run("and break").add_break()
    paragraph.add_run("next line").add_break(WD_BREAK.PAGE)
    paragraph._p.append(parse_xml(f'<w:hyperlink {nsdecls("w", "r")} r:id="rId9"><w:r>'
                                  '<w:t xml:space="preserve"> linked</w:t></w:r></w:hyperlink>'))
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).merge(table.cell(1, 0)).text = "Tall"
    for (row, column), text in {(0, 1): "a", (1, 1): "b", (2, 0): "c", (2, 1): "d"}.items():
        table.cell(row, column).text = text
    table.cell(2, 1).add_table(rows=1, cols=1).cell(0, 0).text = "nested, not read"
    path = tmp_path / "shapes.docx"
    document.save(str(path))
    assert load_document(path).text == "Tab\tand break\nnext line linked\n\nTall | a\nTall | b\nc | d"


@pytest.mark.parametrize("data", [b"PK\x03\x04 this zip is cut short", b"plain words, not a zip"])
def test_damaged_docx_is_corrupt(tmp_path, data):
    path = tmp_path / "letter.docx"
    path.write_bytes(data)
    assert_refused(path, CorruptDocument, "damaged")


def test_empty_docx_is_empty(tmp_path):
    path = tmp_path / "blank.docx"
    make_docx(path, ["", "   "])
    assert_refused(path, EmptyDocument, "no text")


# --------------------------------------------------------------------------------------- HTML

def test_html_drops_scripts_and_navigation_and_reads_cleanly(tmp_path):
    path = tmp_path / "page.html"
    make_html(path, """
        <nav><a href="/">Home</a> <a href="/about">About us</a></nav>
        <script>document.write("tracking code")</script><noscript>Enable JavaScript</noscript>
        <p>Lead   paragraph
           with <b>bold</b>  words.</p>
        <h1>Main   Topic</h1><p>Line one<br>Line two</p><!-- a comment -->
        <ul><li>apples</li><li>pears</li></ul>
        <h4>Minor heading</h4><p>Stays in the section.</p>
        <h2>Prices</h2><table><tr><th>Fruit</th><th>Price</th></tr><tr><td>Apple</td><td>1.20</td></tr></table>
        <pre>def f():
    return 1</pre>""", title="Fruit & Prices", head="<style>p { color: red }</style><script>var x;</script>")
    doc = load_document(path)
    assert (doc.kind, doc.title) == ("html", "Fruit & Prices")
    for gone in ["tracking", "JavaScript", "About us", "color", "var x", "comment"]:
        assert gone not in doc.text
    assert [s.title for s in doc.sections] == [None, "Main Topic", "Prices"]
    assert section_texts(doc) == [
        "Lead paragraph with bold words.",
        "Main Topic\n\nLine one\nLine two\n\n- apples\n- pears\n\nMinor heading\n\nStays in the section.",
        "Prices\n\nFruit | Price\nApple | 1.20\n\ndef f():\n    return 1",
    ]
    assert_sections_tile(doc)


def test_html_without_title_tag_uses_first_h1(tmp_path):
    path = tmp_path / "untitled.htm"
    make_html(path, "<h2>Before</h2><h1>Real Title</h1><p>x</p>")
    assert load_document(path).title == "Real Title"


# --------------------------------------------------------------------------------------- EPUB

def test_epub_chapters_follow_the_spine_with_their_titles(tmp_path):
    path = tmp_path / "novel.epub"
    make_epub(path, [("The Storm", "<p>Rain fell.</p>"),
                     ("The Wick", "<p>She rowed.</p><h2>Aside</h2><p>Later.</p>"),
                     ("The Museum", "<p>Logbooks &amp; charts.</p><script>x()</script>")], title="The Keeper")
    doc = load_document(path)
    assert (doc.kind, doc.title, doc.num_pages) == ("epub", "The Keeper", None)
    assert [s.title for s in doc.sections] == ["The Storm", "The Wick", "The Museum"]
    assert section_texts(doc) == ["The Storm\n\nRain fell.", "The Wick\n\nShe rowed.\n\nAside\n\nLater.",
                                  "The Museum\n\nLogbooks & charts."]
    assert_sections_tile(doc)


def test_epub_without_container_is_corrupt(tmp_path):
    path = tmp_path / "nocontainer.epub"
    make_epub(path, [("One", "<p>x</p>")], with_container=False)
    assert_refused(path, CorruptDocument, "container.xml")


def test_epub_that_is_not_a_zip_is_corrupt(tmp_path):
    path = tmp_path / "fake.epub"
    path.write_bytes(b"<html>not a book</html>")
    assert_refused(path, CorruptDocument, "not a zip")


def test_epub_with_unreadable_package_is_corrupt(tmp_path):
    path = tmp_path / "badopf.epub"
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("META-INF/container.xml", '<container><rootfiles><rootfile full-path="book.opf"/>'
                                                "</rootfiles></container>")
        book.writestr("book.opf", "<package><manifest>")
    assert_refused(path, CorruptDocument, "book.opf", "not valid xml")


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.py"])
def test_empty_file_is_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert_refused(path, EmptyDocument, "empty")


def test_whitespace_only_file_is_empty(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text(" \n\t\n")
    assert_refused(path, EmptyDocument, "no text")


@pytest.mark.parametrize("data", [bytes(range(256)) * 64, b"\x01\x02\x03\x04\x05\x06\x07\x08abc" * 500])
def test_binary_data_named_txt_is_refused(tmp_path, data):
    path = tmp_path / "photo.txt"
    path.write_bytes(data)
    assert_refused(path, CorruptDocument, "binary data")


def test_fifty_megabyte_text_file_is_too_large(tmp_path):
    path = tmp_path / "huge.txt"
    line = b"All work and no play makes Jack a dull boy.\n"
    with path.open("wb") as f:
        f.write(line * (50_000_000 // len(line) + 1))
    assert path.stat().st_size > 50_000_000
    assert_refused(path, DocumentTooLarge, "too large", f"{MAX_TEXT_CHARS:,}")


def test_text_file_too_large_by_size_alone_is_never_read(tmp_path):
    path = tmp_path / "sparse.txt"
    with path.open("wb") as f:
        f.truncate(50_000_000)  # all NUL bytes: if it were read, it would be refused as binary instead
    assert_refused(path, DocumentTooLarge, "too large", max_chars=1_000_000)


def test_text_just_under_the_limit_loads(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("é" * 1000, encoding="utf-8")  # 2000 bytes, 1000 characters
    assert len(load_document(path, max_chars=1000).text) == 1000
    assert_refused(path, DocumentTooLarge, "too large", max_chars=999)


@pytest.mark.parametrize("name", ["archive.zip", "slides.pptx", "Makefile", "photo.jpeg"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    assert not is_supported(path)
    assert_refused(path, UnsupportedDocument, "unsupported")


def test_supported_suffixes_match_is_supported():
    assert {".txt", ".md", ".py", ".pdf", ".docx", ".html", ".htm", ".epub", ".json", ".sql"} <= SUPPORTED_SUFFIXES
    assert is_supported("Report.PDF") and is_supported(Path("a/b/notes.txt"))
    assert not is_supported("old.doc")


@pytest.mark.parametrize("name", ["gone.txt", "gone.md", "gone.pdf", "gone.docx", "gone.html", "gone.epub"])
def test_missing_file(tmp_path, name):
    assert_refused(tmp_path / name, MissingDocument, "not found")


def test_folder_with_a_document_name(tmp_path):
    path = tmp_path / "chapter.txt"
    path.mkdir()
    assert_refused(path, MissingDocument, "folder")


def test_all_errors_are_document_errors():
    for error in (UnsupportedDocument, CorruptDocument, EmptyDocument, DocumentTooLarge, MissingDocument):
        assert issubclass(error, DocumentError)
