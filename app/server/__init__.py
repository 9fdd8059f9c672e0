"""`folio serve`: the OpenAI-compatible HTTP server on the local engine, its wire schema and its command."""
