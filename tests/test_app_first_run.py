"""A first run on a machine without Qt's xcb libraries: Folio names what is missing and how to
install it, before Qt can abort with a misleading message."""
import ctypes.util

import pytest

from app.gui import launch, system_libraries
from app.gui.system_libraries import XCB_LIBRARIES, install_advice, missing_libraries, uses_xcb


def test_the_linker_by_name_agrees_with_ldd_on_the_real_plugin(monkeypatch):
    plugin = system_libraries.xcb_plugin()
    assert plugin is not None and plugin.exists()
    by_ldd = missing_libraries(plugin)
    monkeypatch.setattr(system_libraries.shutil, "which", lambda name: None)  # a system without ldd
    assert missing_libraries(plugin) == by_ldd
    for lib in XCB_LIBRARIES:  # each library the table names is one the linker knows by that name
        found = ctypes.util.find_library(lib.soname.removeprefix("lib").split(".so")[0]) is not None
        assert found == (lib not in by_ldd), lib


def test_the_advice_names_each_systems_packages_once():
    wm, keysyms = (next(lib for lib in XCB_LIBRARIES if lib.soname == name)
                   for name in ("libxcb-icccm.so.4", "libxcb-keysyms.so.1"))
    randr, shape = (next(lib for lib in XCB_LIBRARIES if lib.soname == name)
                    for name in ("libxcb-randr.so.0", "libxcb-shape.so.0"))
    advice = install_advice([wm, keysyms, randr, shape])
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1 libxcb-randr0 libxcb-shape0\n" in advice
    assert "sudo dnf install xcb-util-wm xcb-util-keysyms libxcb\n" in advice
    assert "sudo pacman -S xcb-util-wm xcb-util-keysyms libxcb\n" in advice
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in advice


@pytest.mark.parametrize("environ, expected", [
    ({}, True), ({"QT_QPA_PLATFORM": "xcb"}, True), ({"QT_QPA_PLATFORM": "offscreen"}, False),
    ({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, False),
    ({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0", "QT_QPA_PLATFORM": "xcb"}, True),
])
def test_only_an_x11_start_is_checked(environ, expected):
    assert uses_xcb(environ) is expected


def test_folio_says_what_to_install_instead_of_letting_qt_abort(tmp_path, monkeypatch, capsys):
    wm = next(lib for lib in XCB_LIBRARIES if lib.soname == "libxcb-icccm.so.4")
    dialogs = []
    monkeypatch.setattr(launch, "uses_xcb", lambda: True)
    monkeypatch.setattr(launch, "missing_libraries", lambda: [wm])
    monkeypatch.setattr(launch, "show_dialog", dialogs.append)
    windows = []
    monkeypatch.setattr("app.gui.main_window.MainWindow", lambda *a, **k: windows.append(a))

    assert launch.run_gui(["--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "sudo apt-get install libxcb-icccm4" in err and "sudo dnf install xcb-util-wm" in err
    assert dialogs == [install_advice([wm])] and windows == []
