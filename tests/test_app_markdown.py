"""Answers rendered as a chat reader expects: single line breaks kept, a document's "# heading"
quoted back stays text, while code blocks, lists and tables still render as Markdown."""
from app.gui.markdown_view import MarkdownView

POEM = "The sea is a siren,\nthe night is long,\nthe keeper climbs."


def blocks(view: MarkdownView) -> list[tuple[int, str]]:
    out, block = [], view.document().begin()
    while block.isValid():
        out.append((block.blockFormat().headingLevel(), block.text()))
        block = block.next()
    return out


def test_single_line_breaks_are_kept(qtbot):
    view = MarkdownView()
    qtbot.addWidget(view)
    view.set_markdown(POEM + "\n\nA new paragraph.")
    lines = [line for line in view.document().toPlainText().splitlines() if line]
    assert lines == ["The sea is a siren,", "the night is long,", "the keeper climbs.", "A new paragraph."]


def test_quoted_document_headings_are_not_headings(qtbot):
    view = MarkdownView()
    qtbot.addWidget(view)
    view.set_markdown("From the notes:\n# Lighthouse notes\n## 1. Priming\nFill the casing.")
    assert all(level == 0 for level, _ in blocks(view))
    texts = [text for _, text in blocks(view)]
    assert "# Lighthouse notes" in texts and "## 1. Priming" in texts


def test_code_lists_and_tables_still_render(qtbot):
    view = MarkdownView()
    qtbot.addWidget(view)
    view.set_markdown("Steps:\n\n- one\n- two\n\n```\n# a comment\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    texts = [text for _, text in blocks(view)]
    assert "one" in texts and "two" in texts and "- one" not in texts  # a list, not literal dashes
    assert "# a comment" in texts and "x = 1" in texts                 # code untouched
    assert view.document().toPlainText().count("|") == 0  # the table is a table
    assert not any("  " in text for text in texts)      # the hard-break spaces never show
