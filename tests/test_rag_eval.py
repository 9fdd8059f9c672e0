"""The retrieval eval: its question file holds up against the installed documentation, relevance
and recall are scored as documented, and `python -m rag.eval --quick` runs end to end."""
import contextlib
import io
import json
from collections import Counter

import pytest

from rag.eval import retrieval as rag_eval
from rag.eval.retrieval import QAItem, check_answers, is_relevant, load_qa, naive_chunks, score, write_corpus
from rag.loaders import load_document


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run through the command-line entry point: its printed table and its JSON."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = rag_eval.main(["--quick", "--misses", "--json", str(out)])
    assert code == 0, stderr.getvalue()
    return stdout.getvalue(), json.loads(out.read_text())


def test_question_file_is_well_formed_and_answers_occur_in_their_sources(tmp_path):
    items = load_qa()
    assert len(items) >= 60 and len({i.source for i in items}) >= 10
    assert not [q for q, n in Counter(i.question for i in items).items() if n > 1]
    for item in items:
        assert item.question.strip().endswith("?") and item.answer.strip()
        assert (item.page is not None) == (item.source in rag_eval.PDFS), item

    paths = write_corpus(tmp_path, sorted({i.source for i in items}))
    docs = {key: load_document(path) for key, path in paths.items()}
    kept, dropped = check_answers(items, docs)
    # Package docs may change with the installed versions; the eval drops what no longer applies.
    # Most answers must still be found, or the question file needs rewriting.
    present = [i for i in items if i.source in docs]
    assert len(kept) >= 0.9 * len(present) and len(kept) >= 60, dropped
    assert len({i.source for i in kept}) >= 10


def test_a_missing_answer_or_source_is_dropped_with_its_reason(tmp_path):
    doc = tmp_path / "tool.md"
    doc.write_text("# Tool\n\nSet   TOOL_QUIET=1\nto silence it.", encoding="utf-8")
    docs = {"tool": load_document(doc)}
    items = [QAItem("How do I silence the tool?", "tool", "Set TOOL_QUIET=1 to silence"),
             QAItem("How do I make it loud?", "tool", "TOOL_LOUD=1"),
             QAItem("What is it?", "gone", "nothing")]
    kept, dropped = check_answers(items, docs)
    assert kept == items[:1]
    assert [d["reason"] for d in dropped] == ["answer no longer occurs in the source",
                                              "source document not available on this machine"]


def test_relevance_needs_the_right_source_and_the_answer():
    item = QAItem("Where is the key?", "home", "under the  mat")
    assert is_relevant(item, "home", "It is under the\nmat, as always.")
    assert not is_relevant(item, "office", "It is under the mat.")
    assert not is_relevant(item, "home", "It is under the rug.")

    items = [item, QAItem("Which door?", "home", "the red door"), QAItem("Which floor?", "home", "third")]
    results = [
        [("home", "under the mat")],                                       # rank 1
        [("office", "the red door"), ("home", "a blue door"), ("home", "the red door")],  # rank 3
        [("home", "second")] * 6 + [("home", "third")],                   # rank 7: beyond the top 5
    ]
    result = score("test", "", 10, items, results)
    assert result.ranks == [1, 3, None]
    assert result.recall == {1: pytest.approx(1 / 3), 5: pytest.approx(2 / 3)}
    assert result.mrr == pytest.approx((1 + 1 / 3) / 3)


def test_naive_chunks_are_fixed_windows_that_cover_the_text():
    text = "word " * 700
    chunks = naive_chunks(text, 1000)
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 500]
    assert "".join(chunks) == text


def test_pdfs_made_from_corpus_text_stand_in_for_missing_manuals(tmp_path):
    source = tmp_path / "notes.md"
    source.write_text("Pumps move water. " * 800 + "The end, caf\u00e9 \u2603.", encoding="utf-8")
    pdfs = rag_eval.synthetic_pdfs(tmp_path / "pdfs", {"notes": load_document(source)}, quick=True)
    assert len(pdfs) == 1
    doc = load_document(pdfs[0])
    assert doc.kind == "pdf" and doc.num_pages == 5 and doc.text.startswith("Pumps move water.")


def test_quick_eval_scores_every_configuration(quick_run):
    table, report = quick_run
    configs = {c["name"]: c for c in report["configs"]}
    assert list(configs) == ["naive", "ours, dense", "ours, keyword", "hybrid (default)"]
    assert len(report["items"]) >= 8
    for c in configs.values():
        assert len(c["ranks"]) == len(report["items"]) and c["num_chunks"] > 0
        assert 0 <= c["recall"]["1"] <= c["recall"]["5"] <= 1
        assert f"| {c['name']}: " in table
    assert configs["hybrid (default)"]["recall"]["5"] >= 0.7
    assert "questions without a relevant chunk" in table  # --misses


def test_quick_eval_measures_ingestion(quick_run):
    table, report = quick_run
    speed, machine = report["speed"], report["machine"]
    assert speed["chunks_embedded"] > 0 and speed["chunks_per_s"] > 0
    assert speed["corpus_chunks"] > 0 and speed["corpus_index_s"] > 0
    if speed["pdf_pages"]:
        assert speed["pages_per_s_load_chunk"] > 0 and speed["pages_per_s_end_to_end"] > 0
    assert machine["cpus"] >= 1 and machine["device"] == "cpu"
    assert report["date"] in table and "chunks/s" in table and "pages/s" in table


def test_missing_or_broken_question_file_is_a_clear_error(tmp_path, capsys):
    assert rag_eval.main(["--qa", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no question file" in err and "Traceback" not in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "Q?", "source": "s", "answer": "a"}\n{"question": "no answer"}\n')
    assert rag_eval.main(["--qa", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "Traceback" not in err
