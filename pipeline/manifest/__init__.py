"""The manifest language: YAML with marks, the schema, rows files, expansion into units, chains,
output templates, and the plan of what a run would cost."""

__all__: list[str] = []
