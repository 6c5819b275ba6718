"""The HTTP edge: aiohttp routes and what they ask of a connection; the only package that knows aiohttp."""
