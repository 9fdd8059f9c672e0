"""`python -m app.gui ...` opens the desktop app, as `folio` with no subcommand does."""
import sys

from app.gui.launch import run_gui

sys.exit(run_gui())
