"""`folio index` and `folio ask` as a user runs them: real processes, the bundled models."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import PASSAGE
from doc_fixtures import make_pdf

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["Installing the pump. Bolt the base plate to a level concrete pad before connecting any pipes.",
         "Priming. Fill the casing with water through the priming plug until water flows from the vent.",
         "Troubleshooting. If the motor hums but does not turn, the capacitor has failed and must be replaced."]


def folio(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FOLIO_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_index_reports_each_file_and_carries_on(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "pump.pdf", PAGES)
    (docs / "story.txt").write_text(PASSAGE, encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "empty.md").write_text("", encoding="utf-8")

    first = folio(tmp_path / "data", "index", str(docs))
    assert first.returncode == 1, first.stderr  # some files failed
    lines = first.stdout.splitlines()
    assert any(line.startswith("added") and line.endswith("pump.pdf  (3 chunks)") for line in lines)
    assert any(line.startswith("added") and "story.txt" in line for line in lines)
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 2 and "broken.pdf" in failed[0] and "empty.md" in failed[1]
    assert "2 added, 2 failed. The library holds 2 documents." in first.stderr
    assert "Traceback" not in first.stderr

    again = folio(tmp_path / "data", "index", str(docs / "pump.pdf"))
    assert again.returncode == 0 and again.stdout.startswith("unchanged")


def test_ask_streams_an_answer_then_lists_the_sources(tmp_path):
    make_pdf(tmp_path / "pump.pdf", PAGES)
    result = folio(tmp_path / "data", "ask", "What does it mean if the motor hums but does not turn?",
                   "--doc", str(tmp_path / "pump.pdf"), "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.split("\nSources:\n")
    assert answer.strip()
    listed = sources.splitlines()
    assert [line[1:].split(":")[0] for line in listed[:3]] == ["[1] pump.pdf, page 1", "[2] pump.pdf, page 2",
                                                           "[3] pump.pdf, page 3"]
    assert "capacitor has failed" in listed[2]


def test_ask_searches_the_library_with_top_k(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "pump.pdf", PAGES)
    (docs / "story.txt").write_text(PASSAGE * 2, encoding="utf-8")
    assert folio(tmp_path / "data", "index", str(docs)).returncode == 0
    result = folio(tmp_path / "data", "ask", "How do I prime the pump?", "--top-k", "1", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("\nSources:\n")[1].splitlines()
    assert len([line for line in listed if "[" in line[:3]]) == 1 and "pump.pdf, page 2" in listed[0]


def test_ask_on_an_empty_library_says_what_to_do(tmp_path):
    result = folio(tmp_path / "data", "ask", "anything?")
    assert result.returncode == 2
    assert result.stderr.strip() == "folio ask: the library is empty; add documents with `folio index PATH...`"
