"""Retrieval quality and ingestion speed: `python -m rag.eval` (a developer tool, not shipped).

Imports nothing from tests/: the questions live in `data/`, the synthetic PDFs come from `pdf_maker`.
"""
