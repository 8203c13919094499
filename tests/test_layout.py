"""Output paths stay inside the root whatever the ids; sidecars and the index survive crashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, UnsafeAssetError
from pipeline.output.layout import OutputLayout, check_inside, make_dirs_inside, slug
from pipeline.output.sidecar import (
    append_index,
    atomic_write,
    read_index,
    read_sidecar,
    strip_query,
    verify_asset,
    write_sidecar,
)

KEY = "unit-7f3a"


@pytest.fixture(name="layout")
def _layout(tmp_path: Path) -> OutputLayout:
    return OutputLayout(tmp_path / "out")


@pytest.fixture(name="umask_022")
def _umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def inside(root: Path, path: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


class TestPaths:
    def test_default_template(self, layout: OutputLayout) -> None:
        """``{item}/{step}-{n}.{ext}``, a key-tagged part beside it, and an extension-free sidecar."""
        root = layout.root
        asset = layout.asset_path("sku-1", "image", 1, "jpeg", key=KEY)
        assert asset == root / "sku-1" / "image-1.jpeg"
        part = layout.part_path("sku-1", "image", 1, key=KEY)
        assert part.parent == asset.parent
        assert re.fullmatch(r"image-1\.[0-9a-f]{8}\.part", part.name)
        assert layout.part_path("sku-1", "image", 1) == root / "sku-1" / "image-1.part"
        assert layout.part_path("sku-1", "image", 1, key="other") != part
        assert layout.sidecar_path(asset) == root / "sku-1" / "image-1.json"
        assert layout.sidecar_path(layout.asset_path("sku-1", "image", 1, "png")) == layout.sidecar_path(
            asset
        )
        assert (layout.index_path, layout.runs_dir) == (root / "index.jsonl", root / "runs")

    def test_template_with_model_slug_and_literal_braces(self, tmp_path: Path) -> None:
        """``{model}`` is slugged; ``{{``/``}}`` are literal, as in the manifest's template syntax."""
        layout = OutputLayout(tmp_path, "{model}/{item}/{step}{{x}}-{n}.{ext}")
        path = layout.asset_path("sku-1", "video", 2, "mp4", model="Veo 3 / Fast")
        assert path == tmp_path / "veo-3-fast" / "sku-1" / "video{x}-2.mp4"

    def test_paths_are_computed_not_created(self, layout: OutputLayout) -> None:
        """Computing a path touches nothing on disk."""
        layout.asset_path("sku-1", "image", 1, "jpeg")
        assert not layout.root.exists()

    @pytest.mark.parametrize(
        "template",
        [
            "{item}/{step}-{n}",
            "{item}/{step}-{n}.{ext}.bak",
            "{item}/{step}-{n}{ext}",
            "{ext}/{item}/{step}-{n}.{ext}",
            "/abs/{item}/{step}-{n}.{ext}",
            "{item}/../{step}-{n}.{ext}",
            "{item}/.hidden/{step}-{n}.{ext}",
            "{item}//{step}-{n}.{ext}",
            "{item}\\{step}-{n}.{ext}",
            "{item}/{step}.{ext}",
            "{item}-{n}.{ext}",
            "{item}/{bogus}-{n}.{ext}",
            "{item}/{step.__class__}-{n}.{ext}",
            "{item}/{step}-{n}.{ext",
            "{item}/{}-{n}.{ext}",
            "plain.jpeg",
        ],
    )
    def test_bad_templates_are_config_errors(self, tmp_path: Path, template: str) -> None:
        """A template that could collide, escape, hide or not parse is refused up front."""
        with pytest.raises(ConfigError):
            OutputLayout(tmp_path, template)

    @pytest.mark.parametrize(
        "item",
        [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "a\\b",
            "a\x00b",
            "\x1b[31mred",
            "line\nbreak",
            "\u202eevil",
            ".hidden",
            "trailing.",
            "trailing ",
            "CON",
            "lpt1.txt",
            "runs",
            "index.jsonl",
            "x" * 300,
        ],
    )
    def test_unsafe_ids_are_rejected_not_rewritten(self, layout: OutputLayout, item: str) -> None:
        """Traversal, separators, NUL, controls, bidi marks, dot/device names, reserved tops, long names."""
        with pytest.raises(UnsafeAssetError):
            layout.asset_path(item, "image", 1, "jpeg")

    @pytest.mark.parametrize(
        ("step", "n", "ext"), [("image", -1, "jpeg"), ("image", 1, "JPG"), ("image", 1, "")]
    )
    def test_bad_numbers_and_extensions(self, layout: OutputLayout, step: str, n: int, ext: str) -> None:
        """Negative numbers and odd extensions are refused."""
        with pytest.raises(UnsafeAssetError):
            layout.asset_path("sku-1", step, n, ext)

    @pytest.mark.parametrize(
        "template", ["{item}/{step}-{n}.{ext}", "{item}-{step}{n}.{ext}", "{model}/{key}-{n}.{ext}"]
    )
    @pytest.mark.parametrize(
        "item", ["sku-1", "index", "runs", "con", ".hidden", "a/b", "x" * 250, "ok\u202e"]
    )
    def test_asset_keys_match_asset_key_for_every_extension(
        self, tmp_path: Path, template: str, item: str
    ) -> None:
        """The one-render form used per download gives the same keys, and refuses the same values."""
        layout = OutputLayout(tmp_path, template)
        exts = ("jpeg", "png", "webp", "mp4", "jsonl")
        args = (item, "image", 3)
        try:
            expected: list[str] | type[UnsafeAssetError] = [
                layout.asset_key(*args, ext, key=KEY, model="gpt") for ext in exts
            ]
        except UnsafeAssetError:
            expected = UnsafeAssetError
        if expected is UnsafeAssetError:
            with pytest.raises(UnsafeAssetError):
                layout.asset_keys(*args, exts, key=KEY, model="gpt")
        else:
            assert list(layout.asset_keys(*args, exts, key=KEY, model="gpt")) == expected

    def test_empty_model_slug_is_refused(self, tmp_path: Path) -> None:
        """A model id that slugs to nothing cannot make a directory."""
        layout = OutputLayout(tmp_path, "{model}/{item}/{step}-{n}.{ext}")
        with pytest.raises(UnsafeAssetError):
            layout.asset_path("sku-1", "image", 1, "jpeg", model="///")
        assert slug("GPT-Image 2") == "gpt-image-2"

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(item=st.text(max_size=80), step=st.text(max_size=20), key=st.text(max_size=40))
    def test_any_text_stays_inside_the_root(self, tmp_path: Path, item: str, step: str, key: str) -> None:
        """Property (plan M8): any ids either raise UnsafeAssetError or give paths under realpath(root)."""
        layout = OutputLayout(tmp_path / "prop")
        for ext in ("png", None):
            try:
                if ext is None:
                    path = layout.part_path(item, step, 1, key=key)
                else:
                    path = layout.asset_path(item, step, 1, ext, key=key)
            except UnsafeAssetError:
                continue
            assert inside(layout.root, path)
            assert path.parent.parent == layout.root  # one directory per item, nothing deeper or shallower

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(a=st.text(min_size=1, max_size=30), b=st.text(min_size=1, max_size=30))
    def test_distinct_ids_never_share_a_file(self, tmp_path: Path, a: str, b: str) -> None:
        """Rejecting instead of rewriting keeps the mapping one-to-one."""
        layout = OutputLayout(tmp_path / "prop")
        try:
            pa, pb = layout.asset_path(a, "image", 1, "jpeg"), layout.asset_path(b, "image", 1, "jpeg")
        except UnsafeAssetError:
            return
        assert (pa == pb) == (a == b)


class TestTree:
    def test_symlink_planted_in_the_tree_is_refused(self, layout: OutputLayout, tmp_path: Path) -> None:
        """An item directory that is a symlink out of the root makes every path under it unsafe."""
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        layout.root.mkdir()
        (layout.root / "sku-1").symlink_to(outside, target_is_directory=True)
        with pytest.raises(UnsafeAssetError, match="symlink"):
            layout.asset_path("sku-1", "image", 1, "jpeg")
        with pytest.raises(UnsafeAssetError):
            make_dirs_inside(layout.root, layout.root / "sku-1")
        with pytest.raises(UnsafeAssetError):
            make_dirs_inside(layout.root, layout.root / "sku-1" / "deeper")
        assert list(outside.iterdir()) == []

    def test_symlinked_file_is_refused(self, layout: OutputLayout, tmp_path: Path) -> None:
        """A final name that is a symlink is refused too, even pointing inside."""
        (layout.root / "sku-1").mkdir(parents=True)
        (layout.root / "sku-1" / "image-1.jpeg").symlink_to(tmp_path / "x")
        with pytest.raises(UnsafeAssetError):
            layout.asset_path("sku-1", "image", 1, "jpeg")

    def test_file_where_a_directory_belongs(self, layout: OutputLayout) -> None:
        """A regular file in place of the item directory is refused, not written through."""
        layout.root.mkdir()
        (layout.root / "sku-1").write_text("x")
        with pytest.raises(UnsafeAssetError):
            layout.asset_path("sku-1", "image", 1, "jpeg")
        with pytest.raises(UnsafeAssetError):
            make_dirs_inside(layout.root, layout.root / "sku-1")

    def test_root_itself_may_be_a_symlink(self, tmp_path: Path) -> None:
        """The user may point the output root at another disk; only components below it are checked."""
        real = tmp_path / "disk"
        real.mkdir()
        (tmp_path / "out").symlink_to(real, target_is_directory=True)
        layout = OutputLayout(tmp_path / "out")
        directory = make_dirs_inside(layout.root, layout.asset_path("sku-1", "image", 1, "jpeg").parent)
        assert (real / "sku-1").is_dir()
        assert directory == tmp_path / "out" / "sku-1"

    def test_make_dirs_inside_follows_the_umask(self, layout: OutputLayout, umask_022: None) -> None:
        """New directories are 0o755 under umask 022; existing ones are accepted."""
        target = layout.root / "a" / "b"
        assert make_dirs_inside(layout.root, target) == target
        assert make_dirs_inside(layout.root, target) == target
        assert (target.stat().st_mode & 0o777, (layout.root / "a").stat().st_mode & 0o777) == (0o755, 0o755)

    def test_a_sibling_sharing_the_root_name_prefix_is_outside(self, tmp_path: Path) -> None:
        """``out-2/x`` is not under ``out``: containment compares whole segments, not string prefixes."""
        root = tmp_path / "out"
        root.mkdir()
        for path in (tmp_path / "out-2" / "x", tmp_path / "outx"):
            with pytest.raises(UnsafeAssetError, match="outside"):
                check_inside(root, path)
            with pytest.raises(UnsafeAssetError, match="outside"):
                make_dirs_inside(root, path)

    def test_paths_spelled_through_the_real_root_come_back_under_the_given_root(self, tmp_path: Path) -> None:
        """A symlinked root accepts paths spelled through its target, and non-normal spellings."""
        real = tmp_path / "disk"
        (real / "sku-1").mkdir(parents=True)
        (tmp_path / "out").symlink_to(real, target_is_directory=True)
        root = tmp_path / "out"
        assert check_inside(root, real / "sku-1" / "image-1.jpeg") == root / "sku-1" / "image-1.jpeg"
        assert check_inside(root, Path(f"{root}/./sku-1//image-1.jpeg")) == root / "sku-1" / "image-1.jpeg"
        assert check_inside(root, root) == root

    @pytest.mark.parametrize("path", ["../x", "sku/../../x", "/etc/passwd"])
    def test_check_refuses_paths_outside(self, layout: OutputLayout, path: str) -> None:
        """``..`` and foreign absolute paths never pass the containment check."""
        with pytest.raises(UnsafeAssetError):
            check_inside(layout.root, layout.root / path)


class TestSidecar:
    def test_write_is_sorted_indented_and_replaces(self, tmp_path: Path) -> None:
        """JSON with sorted keys and indent 2; a rewrite replaces it and leaves no temp file."""
        path = tmp_path / "image-1.json"
        write_sidecar(path, {"sha256": "ab", "bytes": 3, "item": "sku-1"})
        assert path.read_text() == '{\n  "bytes": 3,\n  "item": "sku-1",\n  "sha256": "ab"\n}\n'
        write_sidecar(path, {"item": "sku-2"})
        assert read_sidecar(path) == {"item": "sku-2"}
        assert [p.name for p in tmp_path.iterdir()] == ["image-1.json"]

    def test_failed_replace_keeps_the_old_file_and_no_temp(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the rename fails the old sidecar is untouched and the temp is removed (plan S11)."""
        path = tmp_path / "image-1.json"
        write_sidecar(path, {"v": 1})

        def boom(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="No space"):
            write_sidecar(path, {"v": 2})
        assert json.loads(path.read_text()) == {"v": 1}
        assert [p.name for p in tmp_path.iterdir()] == ["image-1.json"]

    def test_a_killed_writers_temp_goes_and_only_its_own(self, tmp_path: Path) -> None:
        """A temp left by a SIGKILL is removed by the next write of that target; others stay."""
        mine, other = tmp_path / ".image-1.json.dead.tmp", tmp_path / ".image-10.json.beef.tmp"
        mine.write_text("{")
        other.write_text("{")
        write_sidecar(tmp_path / "image-1.json", {"a": 1})
        assert not mine.exists()
        assert other.exists()
        assert read_sidecar(tmp_path / "image-1.json") == {"a": 1}

    def test_a_shared_targets_young_temp_is_another_writers_and_stays(self, tmp_path: Path) -> None:
        """The gallery: workers sharing a folder write it at once. A young temp may be another
        writer's between its create and its rename (removing it failed that writer's rename:
        ``report_failed``); only a temp older than a minute is a dead writer's."""
        young, old = tmp_path / ".report.html.beef.tmp", tmp_path / ".report.html.dead.tmp"
        young.write_text("<")
        old.write_text("<")
        os.utime(old, (os.path.getmtime(old) - 120, os.path.getmtime(old) - 120))
        atomic_write(tmp_path / "report.html", b"<html>", exclusive=False)
        assert young.exists()
        assert not old.exists()
        assert (tmp_path / "report.html").read_bytes() == b"<html>"

    def test_unserialisable_data_leaves_nothing(self, tmp_path: Path) -> None:
        """NaN or an object is refused before any file is made."""
        with pytest.raises(ValueError, match="not JSON compliant"):
            write_sidecar(tmp_path / "s.json", {"x": float("nan")})
        assert list(tmp_path.iterdir()) == []

    def test_read_sidecar_tolerates_garbage(self, tmp_path: Path) -> None:
        """Missing, torn or non-object sidecars read as ``None``."""
        (tmp_path / "torn.json").write_text('{"item": "sku')
        (tmp_path / "list.json").write_text("[1]")
        assert [read_sidecar(tmp_path / n) for n in ("missing.json", "torn.json", "list.json")] == [None] * 3

    def test_index_appends_and_skips_a_torn_line(self, tmp_path: Path) -> None:
        """A crash mid-append tears only the last line: readers skip it, the next append starts clean."""
        index = tmp_path / "index.jsonl"
        assert read_index(index) == []
        append_index(index, {"item": "a", "n": 1})
        append_index(index, {"item": "b", "note": "line\u2028sep"})
        with index.open("ab") as f:
            f.write(b'{"item": "c", "sha2')  # the crash
        assert read_index(index) == [{"item": "a", "n": 1}, {"item": "b", "note": "line\u2028sep"}]
        append_index(index, {"item": "d"})
        assert [r["item"] for r in read_index(index)] == ["a", "b", "d"]
        assert index.read_bytes().endswith(b'{"item":"d"}\n')

    def test_verify_asset_detects_a_flipped_byte(self, tmp_path: Path) -> None:
        """Size and sha256 must both match; a single flipped byte or a symlink fails."""
        asset = tmp_path / "image-1.png"
        data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 100
        asset.write_bytes(data)
        record = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert verify_asset(asset, record)
        flipped = bytearray(data)
        flipped[1000] ^= 0x01
        asset.write_bytes(bytes(flipped))
        assert not verify_asset(asset, record)
        asset.write_bytes(data + b"x")
        assert not verify_asset(asset, record)
        link = tmp_path / "link.png"
        asset.write_bytes(data)
        link.symlink_to(asset)
        assert not verify_asset(link, record)
        assert not verify_asset(tmp_path / "missing.png", record)
        assert not verify_asset(asset, {"bytes": "many"})

    @pytest.mark.parametrize(
        ("url", "stripped"),
        [
            (
                "https://cdn.example.com/a/b.jpeg?X-Amz-Signature=abc&t=1#frag",
                "https://cdn.example.com/a/b.jpeg",
            ),
            ("https://user:pw@cdn.example.com:8443/b.mp4?sig=1", "https://cdn.example.com:8443/b.mp4"),
            ("http://127.0.0.1:8080/files/x.png", "http://127.0.0.1:8080/files/x.png"),
            ("http://[::1/x?sig=1", "http://[::1/x"),
        ],
    )
    def test_strip_query(self, url: str, stripped: str) -> None:
        """Query strings, fragments and userinfo never reach a sidecar or a message."""
        assert strip_query(url) == stripped
