"""`python -m app.cli ...` is `folio ...` without the installed entry point."""
import sys

from app.cli.main import main

sys.exit(main())
