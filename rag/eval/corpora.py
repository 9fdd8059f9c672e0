"""The eval's document sets, taken from what this machine ships at run time (never copied into
the repository): package READMEs with two real PDF manuals, Debian's man pages as plain text,
and GNU info manuals as plain text. A set whose files are absent is smaller, not an error.

Each set pairs documents that have questions with look-alike documents that have none (more
compression tools, more text filters), so search must find the right page among similar ones.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PDFS = {
    "libtasn1.pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    "shared-mime-info-spec.pdf": Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
}
MAN_ROOT = Path("/usr/share/man")
INFO_ROOT = Path("/usr/share/info")


@dataclass(frozen=True)
class EvalSet:
    name: str
    kind: str                          # what sort of documents, for the report
    questions: str                     # file name under rag/eval/data/
    distractors: tuple[str, ...]       # document keys indexed without questions
    write: Callable[[str, Path], Path | None]   # one document key -> the file written in a folder, or None
    quick_sources: tuple[str, ...] = ()
    quick_distractors: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------- packages + PDFs

def package_description(name: str) -> tuple[str, str] | None:
    """The long description a package ships in its METADATA, and a file suffix for its markup."""
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    body = meta.get_payload() or meta.get("Description") or ""
    if not body.strip():
        return None
    kind = (meta.get("Description-Content-Type") or "").lower()
    return body, ".md" if "markdown" in kind else ".rst" if "rst" in kind else ".txt"


def write_package_or_pdf(key: str, folder: Path) -> Path | None:
    if key in PDFS:
        return Path(shutil.copy(PDFS[key], folder / key)) if PDFS[key].is_file() else None
    found = package_description(key)
    if found is None:
        return None
    body, suffix = found
    path = folder / f"{key}{suffix}"
    path.write_text(body, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- man pages

def man_source(key: str) -> Path | None:
    """`tar.1` -> /usr/share/man/man1/tar.1.gz (or uncompressed), if installed."""
    name, _, section = key.rpartition(".")
    for candidate in (MAN_ROOT / f"man{section}" / f"{key}.gz", MAN_ROOT / f"man{section}" / key):
        if candidate.is_file():
            return candidate
    return None


def render_man(source: Path) -> str | None:
    """The page as `man` prints it to a pipe: plain text, 80 columns, no hyphenation or
    justification (which would split answer phrases at line ends differently per machine)."""
    man = shutil.which("man")
    if man is None:
        return None
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    try:
        done = subprocess.run([man, "--nh", "--nj", "-P", "cat", "-l", str(source)], env=env, capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.decode("utf-8", "replace")
    return text if done.returncode == 0 and text.strip() else None


def write_man(key: str, folder: Path) -> Path | None:
    source = man_source(key)
    text = render_man(source) if source else None
    if text is None:
        return None
    path = folder / f"{key}.txt"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- info manuals

_INFO_NODE = re.compile(r"\x1f\n(?:File: [^\n]*\n|Tag Table:\n[^\x1f]*|End Tag Table\n?|Indirect:\n[^\x1f]*)?")
_INFO_MARKUP = re.compile(r"\x00\x08\[[^\x00]*\x00\x08\]")   # index-entry and image markers
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def info_text(raw: str) -> str:
    """An info file as reading text: node separators and their `File: ... Node: ...` lines go,
    and so do the tag tables, index markers and control characters; headings, menus and the body
    stay as written."""
    text = _INFO_NODE.sub("\n", raw)
    return _CONTROL.sub("", _INFO_MARKUP.sub("", text)).strip() + "\n"


def info_files(key: str) -> list[Path]:
    """`sed` -> sed.info.gz, or a split manual's parts in order (find.info-1.gz, find.info-2.gz)."""
    parts = sorted(INFO_ROOT.glob(f"{key}.info-*.gz"), key=lambda p: int(p.name.split("-")[-1].split(".")[0]))
    if parts:
        return parts
    whole = INFO_ROOT / f"{key}.info.gz"
    return [whole] if whole.is_file() else []


def write_info(key: str, folder: Path) -> Path | None:
    files = info_files(key)
    if not files:
        return None
    try:
        raw = "".join(gzip.open(f, "rt", encoding="utf-8", errors="replace").read() for f in files)
    except (OSError, EOFError):
        return None
    path = folder / f"{key}.txt"
    path.write_text(info_text(raw), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- the sets

SETS: dict[str, EvalSet] = {s.name: s for s in (
    EvalSet(
        "packages", "package READMEs (Markdown, reStructuredText) and two real PDF manuals", "packages.jsonl",
        ("httpcore", "starlette", "uvicorn", "numpy", "scipy", "chromadb", "jsonschema", "attrs", "sympy", "mmh3",
         "annotated-types", "narwhals", "h11", "markdown-it-py", "idna", "urllib3", "sortedcontainers",
         "python-dateutil", "cloudpickle", "websocket-client", "networkx", "scikit-learn", "fsspec", "platformdirs",
         "gguf"),
        write_package_or_pdf,
        quick_sources=("httpx", "pytest", "pypdf"), quick_distractors=("uvicorn", "starlette"),
    ),
    EvalSet(
        "man", "Debian man pages rendered as plain text (reference pages)", "man.jsonl",
        ("ls.1", "cp.1", "mv.1", "rm.1", "ln.1", "chown.1", "chgrp.1", "cut.1", "tr.1", "wc.1", "head.1", "tail.1",
         "df.1", "du.1", "bzip2.1", "date.1", "touch.1", "mkdir.1", "stat.1", "dd.1", "tee.1", "split.1", "diff.1",
         "cmp.1", "less.1", "more.1", "env.1", "nice.1", "nohup.1", "free.1", "uname.1", "id.1", "su.1", "passwd.1",
         "file.1", "whereis.1", "basename.1", "dirname.1", "realpath.1", "readlink.1", "install.1", "sync.1",
         "seq.1", "shuf.1", "nl.1", "fmt.1", "fold.1", "join.1", "paste.1", "comm.1", "expand.1", "column.1",
         "hexdump.1", "od.1", "strings.1", "base64.1", "md5sum.1", "sha256sum.1", "printf.1", "echo.1", "test.1",
         "expr.1", "sleep.1", "hostname.1", "pgrep.1", "truncate.1", "csplit.1", "tac.1", "pr.1", "mktemp.1",
         "mkfifo.1", "logger.1", "setsid.1", "renice.1", "getent.1", "iconv.1", "locale.1", "stty.1", "script.1",
         "ar.1", "make.1", "scp.1", "passwd.5", "group.5", "shadow.5", "hosts.5", "nsswitch.conf.5", "adduser.conf.5",
         "login.defs.5", "useradd.8", "usermod.8", "ldconfig.8", "chroot.8", "sysctl.8", "glob.7", "hier.7",
         "ascii.7", "environ.7"),
        write_man,
        quick_sources=("tar.1", "xargs.1", "sort.1", "uniq.1"), quick_distractors=("cp.1", "zip.1", "unzip.1"),
    ),
    EvalSet(
        "info", "GNU info manuals as plain text (long prose manuals)", "info.jsonl",
        ("diffutils", "libtasn1", "autosprintf", "rluserman", "libffi", "gpgrt"),
        write_info,
        quick_sources=("gzip", "time", "bc"), quick_distractors=("ed",),
    ),
)}


def write_corpus(eval_set: EvalSet, folder: Path, keys: Sequence[str]) -> dict[str, Path]:
    """Writes each available document of the set into `folder`; missing ones are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in dict.fromkeys(keys):
        path = eval_set.write(key, folder)
        if path is not None:
            paths[key] = path
    return paths
