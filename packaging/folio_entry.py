"""The bundle's entry script (PyInstaller wants a script, Folio's entry point is `app.cli.main:main`):
`Folio` opens the GUI, `Folio --self-test`, `Folio chat` and the other subcommands work as `folio`."""
import multiprocessing
import sys

from app.cli.main import main

if __name__ == "__main__":
    # A frozen program that (through a library) starts a worker process re-runs this script in
    # the child; freeze_support makes that child run the worker instead of a second Folio.
    multiprocessing.freeze_support()
    sys.exit(main())
