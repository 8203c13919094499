"""Where every output file goes, and the guarantee that it stays inside the output root.

Paths are computed from the output template (the syntax of :mod:`pipeline.output.template`);
unsafe values are rejected, never rewritten, so two different ids can never be
folded onto one file. Containment is checked on the real file system: no component
under the root may be a symlink, so nothing planted in the tree can send a write
outside it (plan §6.4 M8–M10).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, UnsafeAssetError
from pipeline.output.template import DEFAULT_OUTPUT_TEMPLATE, Template, compile_template

__all__ = [
    "PLACEHOLDERS",
    "OutputLayout",
    "check_inside",
    "fsync_dir",
    "make_dirs_inside",
    "slug",
]

#: Placeholders an output template may use: the manifest's fields plus ``model``.
PLACEHOLDERS = frozenset({"item", "step", "n", "index", "ext", "key", "model", "name"})

#: Names the layout itself uses at the top of the root; an item may not take them.
_RESERVED_TOP = frozenset({"index.jsonl", "runs"})
_WINDOWS_DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?")
_EXT = re.compile(r"[a-z0-9]{1,10}")
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAME_MAX = 255


@functools.lru_cache(maxsize=1024)
def slug(text: str) -> str:
    """A lower-case ``[a-z0-9._-]`` form of ``text`` (model ids, names), possibly empty."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", folded).strip("-._")[:64]


@functools.lru_cache(maxsize=8192)  # a unit's values are checked once per path it names, ~10 times
def _check_value(name: str, value: str) -> str:
    """Refuse a placeholder value that could change the shape of the path (pure: cached; a refusal
    raises, and lru_cache keeps no exception)."""
    if not value:
        raise UnsafeAssetError(f"output path: {{{name}}} is empty")
    if value in (".", "..") or "/" in value or "\\" in value:
        raise UnsafeAssetError(f"output path: {{{name}}} = {value!r} is not a single path segment")
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in value):
        raise UnsafeAssetError(f"output path: {{{name}}} = {value!r} holds control or format characters")
    return value


@functools.lru_cache(maxsize=8192)
def _check_segment(segment: str) -> None:
    """Refuse a rendered path segment that is hidden, special, or too long (pure: cached)."""
    if not segment or segment in (".", ".."):
        raise UnsafeAssetError(f"output path: empty or relative segment {segment!r}")
    if segment.startswith(".") or segment[0] == " " or segment[-1] in ". ":
        raise UnsafeAssetError(f"output path: {segment!r} starts with a dot or ends with a dot or space")
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in segment):
        raise UnsafeAssetError(f"output path: {segment!r} holds control or format characters")
    if _WINDOWS_DEVICE.fullmatch(segment):
        raise UnsafeAssetError(f"output path: {segment!r} is a reserved device name")
    if len(segment.encode("utf-8")) > _NAME_MAX:
        raise UnsafeAssetError(f"output path: segment longer than {_NAME_MAX} bytes: {segment[:40]!r}…")


def _below(base: str, absolute: str) -> tuple[str, ...] | None:
    """The segments of ``absolute`` under ``base`` (both normalised), or ``None`` if it is not under it."""
    if absolute == base:
        return ()
    prefix = base if base.endswith(os.sep) else base + os.sep
    return tuple(absolute[len(prefix) :].split(os.sep)) if absolute.startswith(prefix) else None


def _resolve(root: Path, path: Path) -> tuple[str, tuple[str, ...]]:
    """``realpath(root)`` and the segments of ``path`` below the root, lexically: no ``..``, no escape.

    Plain strings, and the root resolved once per call: these checks run several times
    per downloaded file, and pathlib plus repeated ``realpath`` walks cost more than the I/O.
    """
    text = os.fspath(path)
    if ".." in text.split(os.sep):
        raise UnsafeAssetError(f"{path}: '..' in an output path")
    absolute = os.path.abspath(text)
    real_root = _real_root(os.fspath(root))
    rel = _below(os.path.abspath(root), absolute)
    if rel is None:
        rel = _below(real_root, absolute)
    if rel is None:
        raise UnsafeAssetError(f"{path} is outside the output root {root}")
    return real_root, rel


_REAL_ROOTS: dict[str, tuple[str, int, int]] = {}


def _real_root(root: str) -> str:
    """``realpath(root)``, remembered while ``root`` still leads to the same directory.

    realpath ``lstat``s every component of the root on each call, several times per file; one
    ``stat`` of the root (which follows a symlinked root to its target) tells whether the
    remembered answer still holds: a root re-pointed elsewhere has another device or inode.
    """
    try:
        st = os.stat(root)
    except OSError:
        return os.path.realpath(root)  # not there yet: nothing to remember
    known = _REAL_ROOTS.get(root)
    if known is not None and known[1:] == (st.st_dev, st.st_ino):
        return known[0]
    real = os.path.realpath(root)
    if len(_REAL_ROOTS) > 64:
        _REAL_ROOTS.clear()
    _REAL_ROOTS[root] = (real, st.st_dev, st.st_ino)
    return real


def check_inside(root: Path, path: Path) -> Path:
    """``path`` (spelled under ``root``) after proving no existing component under ``root`` is a symlink.

    The root itself may be a symlink (the user's choice of disk); below it we
    follow nothing: each existing component under ``realpath(root)`` is ``lstat``-ed,
    so ``realpath(path)`` stays inside ``realpath(root)``.

    Raises:
        UnsafeAssetError: ``..``, outside the root, or a symlink or file where a directory must be.
    """
    real_root, rel = _resolve(root, path)
    current = real_root
    for part in rel:
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break  # nothing deeper exists, so nothing deeper is a symlink
        except NotADirectoryError:
            where = root.joinpath(*rel)
            raise UnsafeAssetError(f"{where}: a file stands where a directory must be") from None
        if stat.S_ISLNK(mode):
            raise UnsafeAssetError(f"{current} is a symlink; refusing to follow it out of the output tree")
    return root.joinpath(*rel)


def make_dirs_inside(root: Path, directory: Path) -> Path:
    """Create ``directory`` and missing parents under ``root`` (mode per umask), following no symlink.

    Raises:
        UnsafeAssetError: as :func:`check_inside`, or a component exists as a symlink or a file.
    """
    real_root, rel = _resolve(root, directory)
    if not os.path.isdir(real_root):
        root.mkdir(parents=True, exist_ok=True)
        real_root = os.path.realpath(root)
    current = real_root
    for part in rel:
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            try:
                os.mkdir(current)
                continue
            except FileExistsError:
                mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise UnsafeAssetError(f"{current} is not a real directory; refusing to write through it")
    return root.joinpath(*rel)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (a rename is atomic, not durable)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """The output tree: ``root`` plus a template such as ``{item}/{step}-{n}.{ext}``.

    The template must end in ``.{ext}`` (the type is known only after the magic
    bytes are read, so the part file and the sidecar are named from the rest) and
    must tell outputs apart: it needs ``{n}``, and ``{item}`` and ``{step}`` unless
    ``{key}`` is there. A bad template is a :class:`ConfigError`; a bad value or an
    unsafe tree is an :class:`UnsafeAssetError`.

    Usage::

        layout = OutputLayout(Path("outputs"))
        final = layout.asset_path("sku-1", "image", 1, "jpeg")   # outputs/sku-1/image-1.jpeg
        part = layout.part_path("sku-1", "image", 1, key=unit_key)  # outputs/sku-1/image-1.<key8>.part
    """

    root: Path
    template: str = DEFAULT_OUTPUT_TEMPLATE
    _stem: Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "_stem", _compile_stem(self.template))

    @property
    def index_path(self) -> Path:
        """The run-spanning ``index.jsonl`` (one line per published asset)."""
        return self.root / "index.jsonl"

    @property
    def runs_dir(self) -> Path:
        """Where per-run reports go."""
        return self.root / "runs"

    def asset_path(
        self,
        item_id: str,
        step: str,
        n: int,
        ext: str,
        *,
        key: str = "",
        model: str = "",
        index: int | None = None,
        name: str = "",
    ) -> Path:
        """The final file of output ``n`` of ``step`` for ``item_id``, with extension ``ext``."""
        return self._finish(self._asset_name(item_id, step, n, ext, key, model, index, name))

    def part_path(
        self,
        item_id: str,
        step: str,
        n: int,
        *,
        key: str = "",
        model: str = "",
        index: int | None = None,
        name: str = "",
    ) -> Path:
        """The ``.part`` file beside the final one, named before the type is known.

        ``<stem>.<key8>.part``, where key8 is the first 8 hex digits of
        sha256(key): a part left by a unit whose request changed is never resumed
        into the new one, and any key text yields a safe name.
        """
        return self._finish(self._part_name(item_id, step, n, key, model, index, name))

    def asset_key(
        self,
        item_id: str,
        step: str,
        n: int,
        ext: str,
        *,
        key: str = "",
        model: str = "",
        index: int | None = None,
    ) -> str:
        """:meth:`asset_path` as a ``/``-separated key under the root, checked lexically only.

        The key of an :class:`~pipeline.output.store.OutputStore`; the store checks the tree.
        """
        return self._check_relative(self._asset_name(item_id, step, n, ext, key, model, index, ""))

    def asset_keys(
        self, item_id: str, step: str, n: int, exts: tuple[str, ...], *, key: str = "", model: str = ""
    ) -> tuple[str, ...]:
        """:meth:`asset_key` for each of ``exts``, the stem rendered and checked once.

        A delivery asks for every extension (to adopt whichever a crashed run published):
        rendering and checking each separately was a visible share of its CPU per file.
        """
        stem = self._render(item_id, step, n, key=key, model=model, index=None, name="")
        head, _, last = stem.rpartition("/")
        if head:
            self._check_relative(head)
        keys = []
        for ext in exts:
            if not _EXT.fullmatch(ext):
                raise UnsafeAssetError(f"output path: extension {ext!r} is not [a-z0-9]{{1,10}}")
            keys.append(f"{head}/{last}.{ext}" if head else self._check_relative(f"{last}.{ext}"))
            if head:
                _check_segment(f"{last}.{ext}")
        return tuple(keys)

    def part_key(self, item_id: str, step: str, n: int, *, key: str = "", model: str = "") -> str:
        """:meth:`part_path` as a key under the staging folder, checked lexically only."""
        return self._check_relative(self._part_name(item_id, step, n, key, model, None, ""))

    def _asset_name(
        self, item_id: str, step: str, n: int, ext: str, key: str, model: str, index: int | None, name: str
    ) -> str:
        """``<stem>.<ext>``: the relative name both :meth:`asset_path` and :meth:`asset_key` check."""
        if not _EXT.fullmatch(ext):
            raise UnsafeAssetError(f"output path: extension {ext!r} is not [a-z0-9]{{1,10}}")
        return f"{self._render(item_id, step, n, key=key, model=model, index=index, name=name)}.{ext}"

    def _part_name(
        self, item_id: str, step: str, n: int, key: str, model: str, index: int | None, name: str
    ) -> str:
        """``<stem>.<key8>.part``: the relative name of :meth:`part_path` and :meth:`part_key`."""
        stem = self._render(item_id, step, n, key=key, model=model, index=index, name=name)
        tag = f".{hashlib.sha256(key.encode()).hexdigest()[:8]}" if key else ""
        return f"{stem}{tag}.part"

    def sidecar_path(self, asset_path: Path) -> Path:
        """The JSON sidecar of an asset: the same stem, ``.json`` (the same for every extension)."""
        if asset_path.suffix == ".json":
            raise UnsafeAssetError(f"{asset_path}: an asset may not be a .json file")
        return self.check(asset_path.with_suffix(".json"))

    def check(self, path: Path) -> Path:
        """``path`` after the containment check of :func:`check_inside`."""
        return check_inside(self.root, path)

    def _render(
        self, item_id: str, step: str, n: int, *, key: str, model: str, index: int | None, name: str
    ) -> str:
        if n < 0 or (index is not None and index < 0):
            raise UnsafeAssetError("output path: n and index must not be negative")
        values = {
            "item": item_id,
            "step": step,
            "n": str(n),
            "index": "" if index is None else str(index),
            "key": key,
            "model": slug(model) if model and "model" in self._stem.names else "",
            "name": slug(name) if name and "name" in self._stem.names else "",
        }
        return self._stem.render(lambda field_name: _check_value(field_name, values[field_name]))

    def _finish(self, relative: str) -> Path:
        return self.check(self.root.joinpath(*self._check_relative(relative).split("/")))

    def _check_relative(self, relative: str) -> str:
        segments = relative.split("/")
        for segment in segments:
            _check_segment(segment)
        if segments[0] in _RESERVED_TOP:
            raise UnsafeAssetError(f"output path: {segments[0]!r} is reserved at the top of the output tree")
        return relative


def _compile_stem(template: str) -> Template:
    """The template without its trailing ``.{ext}``, after checking it can only make safe, distinct paths."""
    compiled = compile_template(template)
    if isinstance(compiled, str):
        raise ConfigError(f"output template {template!r}: {compiled}")
    if (
        compiled is None
        or compiled.names[-1] != "ext"
        or compiled.parts[-1]
        or not compiled.parts[-2].endswith(".")
    ):
        raise ConfigError(f"output template {template!r} must end with '.{{ext}}'")
    names = set(compiled.names)
    if unknown := names - PLACEHOLDERS:
        raise ConfigError(f"output template {template!r}: unknown placeholder(s) {sorted(unknown)}")
    if compiled.names.count("ext") != 1:
        raise ConfigError(f"output template {template!r}: {{ext}} may appear only at the end")
    if "n" not in names or not ({"item", "step"} <= names or "key" in names):
        raise ConfigError(f"output template {template!r} needs {{n}}, and {{item}} and {{step}} or {{key}}")
    stem = Template((*compiled.parts[:-2], compiled.parts[-2][:-1]), compiled.names[:-1])
    sample = stem.render(lambda _name: "x") + ".jpeg"
    if template.startswith("/") or "\\" in template:
        raise ConfigError(f"output template {template!r} must be a relative path with '/' separators")
    try:
        for segment in sample.split("/"):
            _check_segment(segment)
    except UnsafeAssetError as exc:
        raise ConfigError(f"output template {template!r}: {exc}") from None
    return stem
