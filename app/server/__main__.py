"""`python -m app.server ...` is `folio serve ...`."""
import sys

from app.server.command import main

sys.exit(main())
