"""`python -m rag.eval [--quick] [--json FILE] [--misses]`."""
import sys

from rag.eval.retrieval import main

sys.exit(main())
