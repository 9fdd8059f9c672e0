"""Retrieval over the user's documents (see DESIGN.md: RAG)."""
