"""A SIGKILL in the middle of indexing leaves no partial document: after a restart every document
the library shows is complete, and the killed file can simply be added again."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import PASSAGE
from rag import Library
from rag_checks import check_consistent

INDEXER = """
import json, sys
from rag import Library
lib = Library(sys.argv[1])
def progress(p):
    print(json.dumps({"file": p.file_index, "stage": p.stage, "fraction": p.fraction}), flush=True)
lib.add(sys.argv[2:], progress=progress)
print(json.dumps({"finished": True}), flush=True)
"""


def run_until(library: Path, files: list[Path], should_kill) -> list[int]:
    """Index in a child process, SIGKILL it when `should_kill(event)` says so; returns the files it
    reported done."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", INDEXER, str(library), *map(str, files)],
                             stdout=subprocess.PIPE, text=True, env=env)
    done = []
    try:
        for line in child.stdout:
            event = json.loads(line)
            assert not event.get("finished"), "the indexer finished before it could be killed"
            if event["stage"] == "done":
                done.append(event["file"])
            if should_kill(event):
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return done


def test_sigkill_mid_indexing_leaves_no_partial_document(tmp_path, embedder):
    files = []
    for i in range(5):
        path = tmp_path / f"doc{i}.txt"
        path.write_text("\n\n".join(f"Part {i}.{j}. " + PASSAGE for j in range(25)), encoding="utf-8")
        files.append(path)
    library = tmp_path / "library"

    # killed while embedding the third file, before anything of it is written
    done = run_until(library, files, lambda e: e["file"] == 2 and e["stage"] == "embedding" and e["fraction"] > 0.3)
    with Library(library, embedder=embedder) as lib:
        check_consistent(lib)
        assert sorted(d.source for d in lib.documents()) == [files[i] for i in done] == files[:2]

    # killed just after a file is reported done: the next one is being read, embedded or written
    done = run_until(library, files, lambda e: e["file"] == 3 and e["stage"] == "done")
    with Library(library, embedder=embedder) as lib:
        check_consistent(lib)
        names = sorted(d.source for d in lib.documents())
        assert files[:4] == names[:4] and set(names) <= set(files)
        report = lib.add(files)
        assert {r.status for r in report.results} <= {"added", "unchanged"}
        assert sorted(d.source for d in lib.documents()) == files
        assert any(h.source == files[4] for h in lib.search("Part 4.7", k=10, mode="keyword"))
        check_consistent(lib)
