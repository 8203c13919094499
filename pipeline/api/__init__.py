"""The PhotoGPT API as this project sees it: the client, its typed records, the key and base-URL
rules, and the reference's model tables. Imports nothing above it."""

__all__: list[str] = []
