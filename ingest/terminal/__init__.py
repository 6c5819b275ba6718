"""The terminal dashboard: `python -m ingest panels`, the product dashboard's panels drawn as text."""
