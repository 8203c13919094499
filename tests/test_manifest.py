"""The manifest language: valid manifests and their exact expansion, invalid ones and their exact location."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.manifest.load import DEFAULT_OUTPUT_TEMPLATE, Manifest, Step, load_manifest
from pipeline.manifest.survey import describe

Expansion = list[tuple[str, str, int, int | None, dict[str, Any]]]


def write(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def expansion(manifest: Manifest) -> Expansion:
    """Units as (item id, step, index, position of the upstream unit, API body)."""
    position = {unit.key: i for i, unit in enumerate(manifest.units)}
    return [
        (u.item_id, u.step.value, u.index, None if u.upstream is None else position[u.upstream], u.body())
        for u in manifest.units
    ]


GPT = {"modelID": "gpt-image-2"}
OPENAI = {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "high"}}

VALID: list[tuple[str, str, Expansion]] = [
    (
        "minimal image",
        """
        version: 1
        items:
          - {id: a, modelID: gpt-image-2, prompt: a red apple}
        """,
        [("a", "image", 1, None, {**GPT, "prompt": "a red apple"})],
    ),
    (
        "defaults merge under the item, options deep-merged",
        """
        defaults:
          image:
            modelID: gpt-image-2
            aspectRatio: "1:1"
            options: {openai: {imageSize: 1K, outputFormat: jpeg, quality: high}}
        items:
          - id: a
            prompt: p
            aspectRatio: "4:5"
            options: {openai: {quality: low}}
        """,
        [
            (
                "a",
                "image",
                1,
                None,
                {
                    **GPT,
                    "prompt": "p",
                    "aspectRatio": "4:5",
                    "options": {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "low"}},
                },
            )
        ],
    ),
    (
        "defaults options of another family are dropped for the item's model",
        """
        defaults:
          image: {modelID: gpt-image-2, options: {openai: {quality: high}, gemini: {imageSize: 2K}}}
        items:
          - {id: a, prompt: p}
          - {id: b, prompt: p, modelID: nanobanana}
          - {id: c, prompt: p, modelID: seedream, options: {whatever: {x: 1}}}
        """,
        [
            ("a", "image", 1, None, {**GPT, "prompt": "p", "options": {"openai": {"quality": "high"}}}),
            (
                "b",
                "image",
                1,
                None,
                {"modelID": "nanobanana", "prompt": "p", "options": {"gemini": {"imageSize": "2K"}}},
            ),
            (
                "c",
                "image",
                1,
                None,
                {"modelID": "seedream", "prompt": "p", "options": {"whatever": {"x": 1}}},
            ),
        ],
    ),
    (
        "image × 2 → upscale each → animate each upscaled image",
        """
        defaults:
          video: {modelID: veo-3.1, options: {veo: {duration: 8}}}
        items:
          - id: shoe
            modelID: gpt-image-2
            prompt: p
            numImages: 2
            upscale: true
            video: {prompt: orbit}
        """,
        [
            ("shoe", "image", 1, None, {**GPT, "prompt": "p", "numImages": 2}),
            ("shoe", "upscale", 1, 0, {}),
            ("shoe", "upscale", 2, 0, {}),
            (
                "shoe",
                "video",
                1,
                1,
                {"modelID": "veo-3.1", "prompt": "orbit", "options": {"veo": {"duration": 8}}},
            ),
            (
                "shoe",
                "video",
                2,
                2,
                {"modelID": "veo-3.1", "prompt": "orbit", "options": {"veo": {"duration": 8}}},
            ),
        ],
    ),
    (
        "image → video without upscale: one video per image",
        """
        items:
          - id: a
            modelID: nanobanana
            prompt: p
            numImages: 2
            video: {modelID: seedance-2.0, prompt: v, numVideos: 2}
        """,
        [
            ("a", "image", 1, None, {"modelID": "nanobanana", "prompt": "p", "numImages": 2}),
            ("a", "video", 1, 0, {"modelID": "seedance-2.0", "prompt": "v", "numVideos": 2}),
            ("a", "video", 2, 0, {"modelID": "seedance-2.0", "prompt": "v", "numVideos": 2}),
        ],
    ),
    (
        "text-to-video and upscaling an existing asset (then animating it)",
        """
        items:
          - id: beach-teaser
            video: {prompt: "waves at dusk", modelID: seedance-2.0}
          - id: old-hero
            upscale: {imageID: "018f5f29-0000"}
            video: {prompt: drift, modelID: grok-imagine-1.5}
        """,
        [
            ("beach-teaser", "video", 1, None, {"modelID": "seedance-2.0", "prompt": "waves at dusk"}),
            ("old-hero", "upscale", 1, None, {"imageID": "018f5f29-0000"}),
            ("old-hero", "video", 1, 1, {"modelID": "grok-imagine-1.5", "prompt": "drift"}),
        ],
    ),
    (
        "matrix: one variant per combination, ids get value slugs in key order",
        """
        items:
          - id: hero
            prompt: "studio shot of a sneaker"
            matrix: {modelID: [gpt-image-2, nanobanana-pro], aspectRatio: ["1:1", "9:16"]}
        """,
        [
            (
                "hero-gpt-image-2-1x1",
                "image",
                1,
                None,
                {**GPT, "prompt": "studio shot of a sneaker", "aspectRatio": "1:1"},
            ),
            (
                "hero-gpt-image-2-9x16",
                "image",
                1,
                None,
                {**GPT, "prompt": "studio shot of a sneaker", "aspectRatio": "9:16"},
            ),
            (
                "hero-nanobanana-pro-1x1",
                "image",
                1,
                None,
                {"modelID": "nanobanana-pro", "prompt": "studio shot of a sneaker", "aspectRatio": "1:1"},
            ),
            (
                "hero-nanobanana-pro-9x16",
                "image",
                1,
                None,
                {"modelID": "nanobanana-pro", "prompt": "studio shot of a sneaker", "aspectRatio": "9:16"},
            ),
        ],
    ),
    (
        "matrix keys as id placeholders (slugged there, raw in prompts); unused keys still suffix",
        """
        items:
          - id: "{aspectRatio}-shot"
            modelID: gpt-image-2
            prompt: "a poster in {aspectRatio}"
            matrix: {aspectRatio: ["1:1", "16:9"], numImages: [1, 2]}
        """,
        [
            (
                "1x1-shot-1",
                "image",
                1,
                None,
                {**GPT, "prompt": "a poster in 1:1", "aspectRatio": "1:1", "numImages": 1},
            ),
            (
                "1x1-shot-2",
                "image",
                1,
                None,
                {**GPT, "prompt": "a poster in 1:1", "aspectRatio": "1:1", "numImages": 2},
            ),
            (
                "16x9-shot-1",
                "image",
                1,
                None,
                {**GPT, "prompt": "a poster in 16:9", "aspectRatio": "16:9", "numImages": 1},
            ),
            (
                "16x9-shot-2",
                "image",
                1,
                None,
                {**GPT, "prompt": "a poster in 16:9", "aspectRatio": "16:9", "numImages": 2},
            ),
        ],
    ),
    (
        "matrix over a video field with a dotted key",
        """
        items:
          - id: clip
            video: {prompt: rain}
            matrix: {video.modelID: [veo-3.1, kling-video-pro]}
        """,
        [
            ("clip-veo-3.1", "video", 1, None, {"modelID": "veo-3.1", "prompt": "rain"}),
            ("clip-kling-video-pro", "video", 1, None, {"modelID": "kling-video-pro", "prompt": "rain"}),
        ],
    ),
    (
        "inline rows fill placeholders; an item using no column is made once; whole placeholders convert",
        """
        defaults:
          image: {modelID: gpt-image-2}
        rows:
          - {sku: A1, name: Rose, count: "2"}
          - {sku: B2, name: Lily, count: 1}
        items:
          - id: "perfume-{sku}"
            prompt: "A photo of {name} ({count} bottles)"
            numImages: "{count}"
          - id: cover
            prompt: "the whole range"
        """,
        [
            (
                "perfume-A1",
                "image",
                1,
                None,
                {**GPT, "prompt": "A photo of Rose (2 bottles)", "numImages": 2},
            ),
            (
                "perfume-B2",
                "image",
                1,
                None,
                {**GPT, "prompt": "A photo of Lily (1 bottles)", "numImages": 1},
            ),
            ("cover", "image", 1, None, {**GPT, "prompt": "the whole range"}),
        ],
    ),
    (
        "extra passes unlisted fields through, at the request and inside an options group",
        """
        items:
          - id: a
            modelID: gpt-image-2
            prompt: p
            extra: {negativePrompt: blur, safety: {level: 2}}
            options: {openai: {quality: high, extra: {background: transparent}}}
        """,
        [
            (
                "a",
                "image",
                1,
                None,
                {
                    **GPT,
                    "prompt": "p",
                    "negativePrompt": "blur",
                    "safety": {"level": 2},
                    "options": {"openai": {"quality": "high", "background": "transparent"}},
                },
            )
        ],
    ),
    (
        "double braces are literal; YAML 1.2 scalars (16:9, no, on stay text)",
        """
        items:
          - id: a
            modelID: gpt-image-2
            prompt: "a sign reading {{open}} no"
            preset: on
          - id: b
            video: {modelID: veo-3.1, prompt: no, options: {veo: {aspectRatio: 16:9}}}
        """,
        [
            ("a", "image", 1, None, {**GPT, "prompt": "a sign reading {open} no", "preset": "on"}),
            (
                "b",
                "video",
                1,
                None,
                {"modelID": "veo-3.1", "prompt": "no", "options": {"veo": {"aspectRatio": "16:9"}}},
            ),
        ],
    ),
    (
        "a trained model by UUID takes the trained fields; public-only defaults are left out",
        """
        defaults:
          image: {modelID: gpt-image-2, aspectRatio: "1:1", numImages: 2, options: {openai: {quality: high}}}
        items:
          - id: ava
            modelID: 018f5f29-7a7e-7cc3-9c1b-1f5e2a9d4b10
            width: 1024
            height: 1280
            seed: 7
            enhanceFace: true
        """,
        [
            (
                "ava",
                "image",
                1,
                None,
                {
                    "modelID": "018f5f29-7a7e-7cc3-9c1b-1f5e2a9d4b10",
                    "numImages": 2,
                    "width": 1024,
                    "height": 1280,
                    "seed": 7,
                    "enhanceFace": True,
                },
            )
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in VALID], ids=[n for n, _, _ in VALID])
def test_valid_manifest_expands_exactly(tmp_path: Path, text: str, expected: Expansion) -> None:
    """Each valid manifest expands to exactly these units, in upstream-first order."""
    assert expansion(load_manifest(write(tmp_path, text))) == expected


def test_manifest_fields_and_defaults(tmp_path: Path) -> None:
    """Name defaults to the file stem; version, output template and prices are read."""
    path = write(tmp_path, "items: [{id: a, modelID: gpt-image-2, prompt: p}]\n", "spring-sale.yaml")
    manifest = load_manifest(path)
    assert (manifest.name, manifest.version, manifest.output_template) == (
        "spring-sale",
        1,
        DEFAULT_OUTPUT_TEMPLATE,
    )
    assert manifest.items[0].id == "a" and manifest.items[0].location == f"{path}:1:9"
    assert manifest.units[0].location == f"{path}:1:9"
    assert manifest.units[0].expected_outputs == 1 and manifest.units[0].model_id == "gpt-image-2"
    assert (
        describe(manifest)
        == "spring-sale.yaml: 1 item, 1 unit (1 image, 0 upscale, 0 video), 1 paid request, 1 output"
    )


def test_request_is_read_only_and_json_ready(tmp_path: Path) -> None:
    """``request`` refuses changes but serialises as is; ``body()`` is a free copy."""
    import json

    manifest = load_manifest(
        write(
            tmp_path,
            "items: [{id: a, modelID: gpt-image-2, prompt: p, options: {openai: {quality: high}}}]\n",
        )
    )
    unit = manifest.units[0]
    with pytest.raises(TypeError):
        unit.request["prompt"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        unit.request["options"]["openai"]["quality"] = "low"
    assert json.loads(json.dumps(unit.request)) == unit.body()
    body = unit.body()
    body["prompt"] = "changed"
    assert unit.request["prompt"] == "p"


def test_items_carry_rows_and_variants(tmp_path: Path) -> None:
    """Expanded items record the rows line they came from and their matrix values."""
    (tmp_path / "p.csv").write_text("sku\nA\nB\n", encoding="utf-8")
    manifest = load_manifest(
        write(
            tmp_path,
            """
        rows: p.csv
        items:
          - {id: "{sku}", modelID: gpt-image-2, prompt: p, matrix: {aspectRatio: ["1:1", "4:5"]}}
        """,
        )
    )
    assert [(i.id, i.row, dict(i.variant)) for i in manifest.items] == [
        ("A-1x1", 2, {"aspectRatio": "1:1"}),
        ("A-4x5", 2, {"aspectRatio": "4:5"}),
        ("B-1x1", 3, {"aspectRatio": "1:1"}),
        ("B-4x5", 3, {"aspectRatio": "4:5"}),
    ]
    assert all(i.path == "items[0]" and len(i.units) == 1 for i in manifest.items)


def test_trained_model_declared_under_models(tmp_path: Path) -> None:
    """``@name`` refers to a models: entry whose photos folder holds 12–20 images."""
    photos = tmp_path / "photos" / "ava"
    photos.mkdir(parents=True)
    for i in range(12):
        (photos / f"{i:02d}.jpg").write_bytes(b"photo %d" % i)
    (photos / ".DS_Store").write_bytes(b"ignored")
    manifest = load_manifest(
        write(
            tmp_path,
            """
        models:
          ava: {name: Ava, gender: Female, age: 30, photos: photos/ava/}
        items:
          - {id: portrait, modelID: "@ava", prompt: "Ava at golden hour", width: 1024, height: 1024}
        """,
        )
    )
    (spec,) = manifest.models
    assert (spec.name, dict(spec.request)) == ("ava", {"name": "Ava", "gender": "Female", "age": 30})
    assert [p.path.name for p in spec.photos] == [f"{i:02d}.jpg" for i in range(12)]
    assert spec.photos[3].field == ("photos", 3)
    (unit,) = manifest.units
    assert unit.model_id == "@ava" and unit.request["modelID"] == "@ava"
    assert describe(manifest).endswith("2 paid requests, 1 output, 1 model to train")


def test_local_reference_image_becomes_a_hashed_placeholder(tmp_path: Path) -> None:
    """A reference image given as a path is hashed; the request holds ``local:sha256:…`` until upload."""
    import hashlib

    (tmp_path / "ref.png").write_bytes(b"png bytes")
    digest = hashlib.sha256(b"png bytes").hexdigest()
    manifest = load_manifest(
        write(
            tmp_path,
            """
        items:
          - id: a
            modelID: nanobanana
            prompt: p
            referenceImageURLs: [https://example.com/x.jpg, ref.png]
            video:
              modelID: veo-3.1
              prompt: v
              referenceImages: [{url: ref.png, role: last_frame}]
        """,
        )
    )
    image, video = manifest.units
    assert image.request["referenceImageURLs"] == ("https://example.com/x.jpg", f"local:sha256:{digest}")
    (ref,) = image.local_files
    assert (ref.field, ref.path, ref.sha256, ref.size_bytes) == (
        ("referenceImageURLs", 1),
        (tmp_path / "ref.png").resolve(),
        digest,
        9,
    )
    assert video.local_files[0].field == ("referenceImages", 0, "url")
    assert video.body()["referenceImages"] == [{"url": f"local:sha256:{digest}", "role": "last_frame"}]


def test_output_template_is_kept(tmp_path: Path) -> None:
    """A custom output path that tells every output apart is stored for the engine."""
    manifest = load_manifest(
        write(
            tmp_path,
            """
        output: {path: "{name}/{step}/{item}-{n}.{ext}"}
        items: [{id: a, modelID: gpt-image-2, prompt: p, numImages: 2}]
        """,
        )
    )
    assert manifest.output_template == "{name}/{step}/{item}-{n}.{ext}"
    assert list(manifest.units[0].output_numbers()) == [1, 2]


# -- keys -------------------------------------------------------------------------------------------

CHAIN = """
items:
  - id: a
    modelID: gpt-image-2
    prompt: PROMPT_A
    numImages: 2
    upscale: true
    video: {modelID: veo-3.1, prompt: orbit, options: {veo: {duration: 8, resolution: 720p}}}
  - id: b
    modelID: nanobanana
    prompt: prompt b
"""


class TestKeys:
    def test_same_manifest_same_keys(self, tmp_path: Path) -> None:
        """Loading twice gives identical keys."""
        path = write(tmp_path, CHAIN)
        assert [u.key for u in load_manifest(path).units] == [u.key for u in load_manifest(path).units]

    def test_keys_are_stable_across_processes(self, tmp_path: Path) -> None:
        """Keys do not depend on hash randomisation or the process."""
        import os
        import subprocess
        import sys

        path = write(tmp_path, CHAIN)
        code = (
            f"from pathlib import Path; from pipeline.manifest.load import load_manifest; "
            f"print(' '.join(u.key for u in load_manifest(Path({str(path)!r})).units))"
        )
        runs = {
            subprocess.run(  # noqa: S603 - our own interpreter
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": seed},
            ).stdout
            for seed in ("1", "2")
        }
        assert runs == {" ".join(u.key for u in load_manifest(path).units) + "\n"}

    def test_key_order_in_yaml_does_not_matter(self, tmp_path: Path) -> None:
        """Reordering mapping keys changes no key."""
        reordered = CHAIN.replace(
            "video: {modelID: veo-3.1, prompt: orbit, options: {veo: {duration: 8, resolution: 720p}}}",
            "video: {options: {veo: {resolution: 720p, duration: 8}}, prompt: orbit, modelID: veo-3.1}",
        ).replace(
            "    modelID: gpt-image-2\n    prompt: PROMPT_A\n",
            "    prompt: PROMPT_A\n    modelID: gpt-image-2\n",
        )
        assert reordered != CHAIN
        first = [u.key for u in load_manifest(write(tmp_path, CHAIN, "a.yaml")).units]
        assert [u.key for u in load_manifest(write(tmp_path, reordered, "b.yaml")).units] == first

    def test_changed_prompt_changes_that_item_and_its_downstream_only(self, tmp_path: Path) -> None:
        """An edited prompt is new work for its image, upscales and videos; other items keep their keys."""
        before = load_manifest(write(tmp_path, CHAIN, "a.yaml")).units
        after = load_manifest(write(tmp_path, CHAIN.replace("PROMPT_A", "a new prompt"), "b.yaml")).units
        changed = [(u.item_id, u.step.value) for u, v in zip(before, after, strict=True) if u.key != v.key]
        assert changed == [("a", "image"), ("a", "upscale"), ("a", "upscale"), ("a", "video"), ("a", "video")]

    def test_moved_reference_file_keeps_its_key(self, tmp_path: Path) -> None:
        """The key uses the file's content hash, not its path."""
        (tmp_path / "ref.jpg").write_bytes(b"same bytes")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "moved.jpg").write_bytes(b"same bytes")
        (tmp_path / "other.jpg").write_bytes(b"other bytes")
        text = "items: [{id: a, modelID: nanobanana, prompt: p, referenceImageURLs: [REF]}]\n"
        keys = [
            load_manifest(write(tmp_path, text.replace("REF", ref), f"{i}.yaml")).units[0].key
            for i, ref in enumerate(("ref.jpg", "sub/moved.jpg", "other.jpg"))
        ]
        assert keys[0] == keys[1] != keys[2]


# -- the examples -----------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "manifests"


@pytest.mark.parametrize("name", ["demo.yaml", "catalog.yaml", "chain.yaml", "reference.yaml"])
def test_examples_validate(name: str) -> None:
    """Every example in manifests/ loads."""
    manifest = load_manifest(EXAMPLES / name)
    assert manifest.units


def test_example_shapes() -> None:
    """The examples do what their comments say."""
    demo = load_manifest(EXAMPLES / "demo.yaml")
    assert (
        describe(demo)
        == "demo.yaml: 6 items, 7 units (5 image, 1 upscale, 1 video), 7 paid requests, 7 outputs"
    )
    catalog = load_manifest(EXAMPLES / "catalog.yaml")
    assert (
        len(catalog.items) == 12 * 2 + 1
        and catalog.items[0].id == "TS-001-1x1"
        and catalog.items[1].id == "TS-001-4x5"
    )
    chain = load_manifest(EXAMPLES / "chain.yaml")
    assert [u.step for u in chain.units if u.item_id == "sneaker-hero"] == [Step.IMAGE] + [
        Step.UPSCALE
    ] * 2 + [Step.VIDEO] * 2
