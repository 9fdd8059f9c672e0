"""Icons, themes and default prompts, shipped as package data."""
