"""Developer tools for measuring the engine: `python -m engine.bench` (the runner), the GPU-only
figures (`gpu`) and random-weight models in real shapes (`dummy`). Nothing in the product imports
this package, and the app bundle leaves it out."""
