"""Documents in, cited passages out: loaders, chunking, the MiniLM embedder, a chromadb + SQLite
store, hybrid retrieval and prompt building. Imports nothing from `engine` or `app`."""
from rag.context import DEFAULT_SYSTEM_PROMPT, Prompt, Source, build_prompt, cited_sources
from rag.embedder import Embedder
from rag.library import FileResult, IndexProgress, IndexReport, Library
from rag.retrieve import Hit
from rag.store import DocumentInfo, LibraryError

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DocumentInfo", "Embedder", "FileResult", "Hit", "IndexProgress", "IndexReport",
           "Library", "LibraryError", "Prompt", "Source", "build_prompt", "cited_sources"]
