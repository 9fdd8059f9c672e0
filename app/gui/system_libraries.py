"""Before Qt starts on Linux: are the system libraries its xcb platform plugin needs installed?

Without them Qt aborts with "Could not load the Qt platform plugin xcb", naming a library that may
well be installed. This module asks the dynamic linker instead (`ldd` on the plugin, the way Qt
will load it; each library by name where there is no `ldd`) and says what to install, for Debian
and Ubuntu, Fedora and Arch. It imports no Qt: it runs before Qt is loaded.

`python -m app.gui.system_libraries --missing-debs` prints the Debian packages still missing, for
`make run` to install where it can.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SystemLibrary:
    soname: str
    debian: str
    fedora: str
    arch: str


# What libqxcb.so and libQt6XcbQpa.so.6 of PySide6 6.11 need beyond Qt's own libraries (from
# `readelf -d` and `ldd`), with the package that ships each.
XCB_LIBRARIES = (
    SystemLibrary("libxcb.so.1", "libxcb1", "libxcb", "libxcb"),
    SystemLibrary("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    SystemLibrary("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    SystemLibrary("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    SystemLibrary("libxcb-image.so.0", "libxcb-image0", "xcb-util-image", "xcb-util-image"),
    SystemLibrary("libxcb-util.so.1", "libxcb-util1", "xcb-util", "xcb-util"),
    SystemLibrary("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil"),
    SystemLibrary("libxcb-randr.so.0", "libxcb-randr0", "libxcb", "libxcb"),
    SystemLibrary("libxcb-render.so.0", "libxcb-render0", "libxcb", "libxcb"),
    SystemLibrary("libxcb-shape.so.0", "libxcb-shape0", "libxcb", "libxcb"),
    SystemLibrary("libxcb-shm.so.0", "libxcb-shm0", "libxcb", "libxcb"),
    SystemLibrary("libxcb-sync.so.1", "libxcb-sync1", "libxcb", "libxcb"),
    SystemLibrary("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb", "libxcb"),
    SystemLibrary("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb", "libxcb"),
    SystemLibrary("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    SystemLibrary("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    SystemLibrary("libX11.so.6", "libx11-6", "libX11", "libx11"),
    SystemLibrary("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb", "libx11"),
    SystemLibrary("libGL.so.1", "libgl1", "libglvnd-glx", "libglvnd"),
    SystemLibrary("libEGL.so.1", "libegl1", "libglvnd-egl", "libglvnd"),
    SystemLibrary("libfontconfig.so.1", "libfontconfig1", "fontconfig", "fontconfig"),
    SystemLibrary("libfreetype.so.6", "libfreetype6", "freetype", "freetype2"),
    SystemLibrary("libdbus-1.so.3", "libdbus-1-3", "dbus-libs", "dbus"),
    SystemLibrary("libglib-2.0.so.0", "libglib2.0-0", "glib2", "glib2"),
    SystemLibrary("libgthread-2.0.so.0", "libglib2.0-0", "glib2", "glib2"),
)
_BY_SONAME = {lib.soname: lib for lib in XCB_LIBRARIES}


def xcb_plugin() -> Path | None:
    """PySide6's xcb platform plugin, found without importing Qt."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(next(iter(spec.submodule_search_locations))) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.exists() else None


def uses_xcb(environ=os.environ) -> bool:
    """Whether Qt will start on X11 here: on Linux, unless told to use another platform (a
    Wayland session, offscreen for tests and screenshots)."""
    if not sys.platform.startswith("linux"):
        return False
    platform = environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0].split(";")[0] == "xcb"
    return not (environ.get("XDG_SESSION_TYPE") == "wayland" and environ.get("WAYLAND_DISPLAY"))


def missing_libraries(plugin: Path | None = None) -> list[SystemLibrary]:
    """The system libraries the xcb plugin cannot find, in the order of `XCB_LIBRARIES`."""
    plugin = plugin or xcb_plugin()
    missing = _unresolved_by_ldd(plugin) if plugin is not None else None
    if missing is None:  # no ldd (or no plugin to ask about): ask the linker for each library
        missing = {lib.soname for lib in XCB_LIBRARIES if not _loadable(lib.soname)}
    known = [lib for lib in XCB_LIBRARIES if lib.soname in missing]
    return known + [SystemLibrary(s, "", "", "") for s in sorted(missing - _BY_SONAME.keys())]


def install_advice(missing: list[SystemLibrary]) -> str:
    """What to tell a person whose machine lacks `missing`."""
    def names(attr: str) -> str:
        return " ".join(dict.fromkeys(getattr(lib, attr) for lib in missing if getattr(lib, attr)))

    return (f"Folio's window needs system libraries that are not installed: "
            f"{', '.join(lib.soname for lib in missing)}.\n"
            f"Debian, Ubuntu:  sudo apt-get install {names('debian')}\n"
            f"Fedora:          sudo dnf install {names('fedora')}\n"
            f"Arch:            sudo pacman -S {names('arch')}\n"
            f"Then start Folio again. (The terminal commands, e.g. `folio chat`, work without them.)")


def show_dialog(text: str) -> bool:
    """The advice in a window, by whichever X11 dialog program the system has; False if none."""
    if not os.environ.get("DISPLAY"):
        return False
    for program, args in (("zenity", ["--error", "--no-wrap", "--title=Folio", f"--text={text}"]),
                          ("kdialog", ["--title", "Folio", "--error", text]),
                          ("xmessage", ["-center", text])):
        if shutil.which(program):
            try:
                subprocess.run([program, *args], timeout=600, check=False)
                return True
            except (OSError, subprocess.SubprocessError):
                continue
    return False


def _unresolved_by_ldd(plugin: Path) -> set[str] | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line}


def _loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname, mode=os.RTLD_LAZY)
        return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if argv != ["--missing-debs"]:
        print("usage: python -m app.gui.system_libraries --missing-debs", file=sys.stderr)
        return 2
    print(" ".join(dict.fromkeys(lib.debian for lib in missing_libraries() if lib.debian)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
