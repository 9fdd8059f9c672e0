"""Hostile file names and paths (issue 11): any bytes in a name are stored and shown safely end to
end, control characters never reach a terminal raw, and an index run reports every path it
could not read, one result each, instead of dying or skipping it without a word."""
from __future__ import annotations

import ctypes
import os
import sys
import threading
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PASSAGE
from hypothesis import given
from hypothesis import strategies as st
from rag_checks import check_consistent

from rag import Library
from rag.library import expand
from rag.loaders import load_document
from rag.paths import display_name

UNDECODABLE = os.fsdecode(b"caf\xe9 menu.txt")  # Latin-1 bytes on a UTF-8 system: "caf\udce9 menu.txt"
HOSTILE = "evil\n\x1b[31mred\x1b[0m\r\u202etxt.exe.md"  # a new line, colour codes, a return, a bidi override


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ display_name

@pytest.mark.parametrize("name,shown", [
    ("Résumé 東京 ✓.pdf", "Résumé 東京 ✓.pdf"),
    (UNDECODABLE, "caf\\xe9 menu.txt"),
    (HOSTILE, "evil\\n\\x1b[31mred\\x1b[0m\\r\\u202etxt.exe.md"),
    ("tab\there\x00nul\x7fdel\x85nel", "tab\\there\\x00nul\\x7fdel\\x85nel"),
    ("\u2066isolate\u2069 \u200fmark\u2028line", "\\u2066isolate\\u2069 \\u200fmark\\u2028line"),
    ("\ud800lone surrogate", "\\ud800lone surrogate"),
    (b"/tmp/caf\xe9/\x1b[2J.txt", "/tmp/caf\\xe9/\\x1b[2J.txt"),
    (Path("/tmp") / HOSTILE, "/tmp/evil\\n\\x1b[31mred\\x1b[0m\\r\\u202etxt.exe.md"),
])
def test_display_name_escapes_what_a_terminal_would_obey(name, shown):
    assert display_name(name) == shown


UNSAFE_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_display_name_is_always_one_safe_line(name):
    shown = display_name(name)
    shown.encode("utf-8")  # no lone surrogates: printable, storable, tokenizable
    assert not any(unicodedata.category(c) in UNSAFE_CATEGORIES or c in BIDI_CONTROLS for c in shown)
    if not any(unicodedata.category(c) in UNSAFE_CATEGORIES or c in BIDI_CONTROLS for c in name):
        assert shown == name  # everything else, accents and scripts and emoji, is left alone


# ---------------------------------------------------------------------- names end to end

def test_undecodable_and_control_character_names_work_end_to_end(library, tmp_path, embedder):
    odd = write(tmp_path / UNDECODABLE, "The café menu lists bouillabaisse on Fridays and crêpes every day.")
    hostile = write(tmp_path / HOSTILE, "# \n\nThe harbour pilot boards ships at the breakwater lighthouse.")
    plain = write(tmp_path / "plain.txt", PASSAGE)
    broken = tmp_path / os.fsdecode(b"bro\xffken\n.pdf")
    broken.write_bytes(b"%PDF-1.7 not really")
    report = library.add([tmp_path])
    assert {r.path: r.status for r in report.results} == {odd: "added", hostile: "added", plain: "added",
                                                           broken: "failed"}
    failure = report.failed[0].error
    assert failure.startswith("bro\\xffken\\n.pdf: ") and "\n" not in failure
    failure.encode("utf-8")

    docs = {d.source: d for d in library.documents()}
    assert set(docs) == {odd, hostile, plain}  # the very paths, bytes and all
    assert docs[odd].title == "caf\\xe9 menu.txt" and docs[hostile].title == display_name(HOSTILE)
    hit = library.search("what is on the café menu on Friday?", k=1)[0]
    assert hit.source == odd and "bouillabaisse" in hit.text
    assert library.search("harbour pilot breakwater", k=1, mode="keyword")[0].source == hostile

    again = library.add([odd, hostile])  # found again by their stored source
    assert [r.status for r in again.results] == ["unchanged", "unchanged"]
    copy = write(tmp_path / "copy.txt", odd.read_text(encoding="utf-8"))
    duplicate = library.add([copy]).results[0]
    assert duplicate.status == "duplicate" and duplicate.error == f"same content as {display_name(odd)}"
    library.remove(docs[odd].doc_id)
    assert odd not in {d.source for d in library.documents()}
    check_consistent(library)


def test_prompts_over_undecodable_and_hostile_names_are_printable_text(library, tmp_path):
    """Building the prompt labels each source by its name: escaped, so the tokenizer gets text."""
    from rag.context import build_prompt
    odd = write(tmp_path / UNDECODABLE, "The café menu lists bouillabaisse on Fridays and crêpes every day.")
    hostile = write(tmp_path / HOSTILE, "The harbour pilot boards ships at the breakwater lighthouse.")
    library.add([odd, hostile])
    ids = [d.doc_id for d in library.documents()]
    prompt = build_prompt("What is on the menu?", library=library, pinned_doc_ids=ids, search=False)
    text = "".join(m["content"] for m in prompt.messages)
    text.encode("utf-8")  # no surrogates left
    assert "caf\\xe9 menu.txt" in text and display_name(HOSTILE) in text
    assert "\u202e" not in text and "\x1b" not in text


def test_undecodable_names_survive_reopening(tmp_path, embedder):
    odd = write(tmp_path / UNDECODABLE, PASSAGE)
    with Library(tmp_path / "lib", embedder=embedder) as lib:
        lib.add([odd])
    with Library(tmp_path / "lib", embedder=embedder) as lib:
        assert [d.source for d in lib.documents()] == [odd]
        assert lib.add([odd]).results[0].status == "unchanged"


def test_loader_messages_and_titles_escape_the_name(tmp_path):
    path = write(tmp_path / HOSTILE, "no heading here")
    assert load_document(path).title == display_name(HOSTILE)
    empty = write(tmp_path / os.fsdecode(b"\x1b]0;owned\x07\xfe.txt"), "")
    with pytest.raises(Exception) as caught:
        load_document(empty)
    assert str(caught.value) == "\\x1b]0;owned\\x07\\xfe.txt: the file is empty"


# ------------------------------------------------------------------------- unreadable paths

_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def _without_root_file_access():
    """Root reads any folder whatever its mode; for the duration, this thread drops the two
    capabilities that let it (they stay permitted, so they can be taken back)."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this thread's capabilities")
    saved = data[0].effective
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("cannot drop root's file access here")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@contextmanager
def unreadable(*folders: Path):
    """The folders really cannot be listed (or searched) while this lasts."""
    if sys.platform != "linux":
        pytest.skip("folder permissions are tested on Linux")
    modes = [folder.stat().st_mode for folder in folders]
    for folder in folders:
        folder.chmod(0)
    try:
        with _without_root_file_access():
            for folder in folders:
                with pytest.raises(PermissionError):
                    os.listdir(folder)
            yield
    finally:
        for folder, mode in zip(folders, modes):
            folder.chmod(mode)


def test_unreadable_folders_are_reported_per_path_and_the_run_goes_on(library, tmp_path):
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "later").mkdir()
    first = write(docs / "a.txt", PASSAGE)
    write(docs / "locked" / "secret.txt", "never read")
    last = write(docs / "later" / "z.txt", "Zebras graze on the savanna at dawn.")
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    inside = write(sealed / "inside.txt", "behind a folder that may not be searched")
    with unreadable(docs / "locked", sealed):
        assert expand([docs, inside]) == [first, docs / "later" / "z.txt", docs / "locked", inside]
        report = library.add([docs, inside, sealed])
    results = {r.path: (r.status, r.error) for r in report.results}
    assert results == {
        first: ("added", None),
        last: ("added", None),
        docs / "locked": ("failed", "locked: folder cannot be opened (Permission denied)"),
        inside: ("failed", "inside.txt: cannot be read (Permission denied)"),
        sealed: ("failed", "sealed: folder cannot be opened (Permission denied)"),
    }
    assert sorted(d.source for d in library.documents()) == [first, last]
    check_consistent(library)


def test_pipes_and_devices_fail_alone_instead_of_hanging_the_run(library, tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "zeros.txt").symlink_to("/dev/zero")
    good = write(tmp_path / "good.txt", PASSAGE)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(library.add([tmp_path])), daemon=True)
    worker.start()
    worker.join(timeout=120)  # a read of either would never end: this only keeps a failure from hanging
    assert done, "indexing a folder with a pipe and a device in it never finished"
    assert {r.path.name: (r.status, r.error) for r in done[0].results} == {
        "good.txt": ("added", None),
        "pipe.txt": ("failed", "pipe.txt: not a regular file (a pipe, socket or device)"),
        "zeros.txt": ("failed", "zeros.txt: not a regular file (a pipe, socket or device)"),
    }
    assert [d.source for d in library.documents()] == [good]


def test_an_unforeseen_failure_on_one_path_fails_that_path_only(library, tmp_path, monkeypatch):
    """Whatever goes wrong with one file (here the catalog failing on it) is that file's result."""
    import sqlite3

    bad = write(tmp_path / "bad.txt", "This one meets a failing disk.")
    good = write(tmp_path / "good.txt", PASSAGE)
    find = library._store.find

    def failing_find(*, source=None, content_hash=None):
        if source == bad:
            raise sqlite3.OperationalError("disk I/O error")
        return find(source=source, content_hash=content_hash)
    monkeypatch.setattr(library._store, "find", failing_find)
    report = library.add([bad, good])
    assert [(r.status, r.error) for r in report.results] == [
        ("failed", "bad.txt: could not be indexed (OperationalError: disk I/O error)"), ("added", None)]
    check_consistent(library)
