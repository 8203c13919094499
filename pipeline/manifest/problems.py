"""Problems found while loading a manifest: collected once each, reported all together.

A compiler-style loader keeps going after the first mistake; this log de-duplicates
(the same template mistake seen on 100,000 rows is one problem) and caps the list
so a wholly wrong rows file still gives a readable report.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ManifestError, ManifestProblem

__all__ = ["ProblemLog", "format_path"]


class ProblemLog:
    """Collects problems once each; reports the first ``limit`` in file order (``first_file`` first)."""

    def __init__(self, *, limit: int = 200, first_file: str = "") -> None:
        self._limit = limit
        self._first_file = first_file
        self._seen: set[ManifestProblem] = set()
        self.problems: list[ManifestProblem] = []
        self.dropped = 0

    def add(self, location: str, path: str, message: str) -> None:
        problem = ManifestProblem(location, path, message)
        if problem in self._seen:
            return
        self._seen.add(problem)
        if len(self.problems) < self._limit * 25:  # keep enough to sort, bounded for 100,000 bad rows
            self.problems.append(problem)
        else:
            self.dropped += 1

    def extend(self, error: ManifestError) -> None:
        for problem in error.problems:
            self.add(problem.location, problem.path, problem.message)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def error(self) -> ManifestError:
        """The error to raise: problems in file order (files as first mentioned), then the overflow."""
        files: dict[str, int] = {self._first_file: 0}
        for problem in self.problems:
            files.setdefault(_place(problem.location)[0], len(files))

        def order(problem: ManifestProblem) -> tuple[int, int, int]:
            label, line, column = _place(problem.location)
            return files[label], line, column

        problems = sorted(self.problems, key=order)
        hidden = len(problems) - self._limit + self.dropped
        if hidden > 0:
            problems = problems[: self._limit]
            problems.append(
                ManifestProblem(problems[-1].location, "", f"… and {hidden} more problems not shown")
            )
        return ManifestError(problems)


def _place(location: str) -> tuple[str, int, int]:
    """``file:line:column`` (or ``file:line``, or ``file``) split for sorting."""
    parts = location.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    parts = location.rsplit(":", 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1]), 0
    return location, 0, 0


def format_path(path: Sequence[str | int]) -> str:
    """``("items", 3, "video", "options")`` → ``items[3].video.options``."""
    out = ""
    for segment in path:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}" if out else segment
    return out
