"""The command line: every command, its flags, and the live progress display."""

__all__: list[str] = []
