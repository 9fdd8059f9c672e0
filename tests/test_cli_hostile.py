"""File names a terminal must not obey: `folio index` run as a user runs it, on files whose names
hold line breaks, escape sequences, a right-to-left override or bytes that are not UTF-8 (Linux
allows any byte in a name but "/" and NUL)."""
import os
import subprocess
import sys
from pathlib import Path

from app.printable import printable
from conftest import PASSAGE

ROOT = Path(__file__).resolve().parents[1]
# the raw name, and how folio prints it
CONTROL_NAMES = {
    b"line\nbreak.txt": "line\\nbreak.txt",
    b"carriage\rreturn.txt": "carriage\\rreturn.txt",
    b"escape\x1b[2J\x1b[31mred.txt": "escape\\x1b[2J\\x1b[31mred.txt",
    "override\u202egpj.txt".encode(): "override\\u202egpj.txt",  # shows as "overridetxt.jpg" raw
    b"tab\there.txt": "tab\\there.txt",
}
NOT_UTF8_NAMES = {
    b"latin1-caf\xe9.txt": "latin1-caf\\xe9.txt",
    b"broken-\xff\xfe.txt": "broken-\\xff\\xfe.txt",
}
RAW_CONTROLS = [b"\r", b"\x1b", "\u202e".encode(), b"\t"]


def make_files(folder: Path, names: dict[bytes, str]) -> None:
    """One distinct text file per name, created through bytes paths: the names need not decode."""
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(f"Document {i}. {PASSAGE}".encode())


def folio_index(data_dir: Path, folder: Path) -> subprocess.CompletedProcess:
    """`folio index FOLDER`, its output as the bytes the terminal would get."""
    env = dict(os.environ, FOLIO_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "app.cli", "index", str(folder)], capture_output=True, env=env,
                          timeout=600)


def assert_one_escaped_line_per_file(result: subprocess.CompletedProcess, folder: Path, names: dict[bytes, str]):
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    for raw in RAW_CONTROLS:
        assert raw not in result.stdout and raw not in result.stderr
    lines = result.stdout.decode("utf-8").splitlines()  # strict: nothing undecodable was printed
    assert len(lines) == len(names)  # no name broke its line
    for shown in names.values():
        assert f"added      {folder}/{shown}  (1 chunk)" in lines, (shown, lines)


def test_index_prints_control_characters_in_file_names_escaped(tmp_path):
    folder = tmp_path / "docs"
    make_files(folder, CONTROL_NAMES)
    result = folio_index(tmp_path / "data", folder)
    assert_one_escaped_line_per_file(result, folder, CONTROL_NAMES)
    assert f"{len(CONTROL_NAMES)} added" in result.stderr.decode()


def test_index_prints_names_that_are_not_utf8_as_their_bytes(tmp_path):
    folder = tmp_path / "docs"
    make_files(folder, NOT_UTF8_NAMES)
    result = folio_index(tmp_path / "data", folder)
    assert_one_escaped_line_per_file(result, folder, NOT_UTF8_NAMES)


def test_printable_escapes_only_what_a_terminal_would_obey():
    assert printable("Café 日本語 notes (v2).pdf") == "Café 日本語 notes (v2).pdf"
    assert printable(os.fsdecode(b"caf\xe9")) == "caf\\xe9"  # the byte itself
    assert printable("a\u2028b\x85c\x7fd\u2066e") == "a\\u2028b\\x85c\\x7fd\\u2066e"
    assert printable("two\nlines\tand\x1b[0m", keep="\n\t") == "two\nlines\tand\\x1b[0m"
