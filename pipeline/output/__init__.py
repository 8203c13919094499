"""Where finished assets land: verified downloads, output paths, sidecars and the index, the
gallery. Imports no engine."""

__all__: list[str] = []
