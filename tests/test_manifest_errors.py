"""Invalid manifests: every problem at its exact ``file:line:column`` and field path, all reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ManifestError, ManifestProblem
from pipeline.manifest.load import load_manifest


def write(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path, **kwargs: Any) -> tuple[ManifestProblem, ...]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, **kwargs)
    return caught.value.problems


# (name, manifest, "line:column", field path, message fragment)
INVALID: list[tuple[str, str, str, str, str]] = [
    (
        "unknown top-level section",
        "version: 1\nitem: []\nitems: [{id: a, video: {modelID: veo-3.1, prompt: p}}]\n",
        "2:1",
        "item",
        "did you mean 'items'?",
    ),
    (
        "unsupported version",
        "version: 2\nitems: [{id: a, video: {modelID: veo-3.1, prompt: p}}]\n",
        "1:10",
        "version",
        "this tool reads version 1",
    ),
    ("missing items", "version: 1\n", "1:1", "", "missing required section 'items'"),
    ("empty items", "items: []\n", "1:8", "items", "non-empty list"),
    (
        "missing id",
        "items:\n  - prompt: p\n    modelID: gpt-image-2\n",
        "2:5",
        "items[0]",
        "missing required field 'id'",
    ),
    (
        "unknown item field, did you mean",
        "items:\n  - id: a\n    prompt: p\n    modelID: gpt-image-2\n    aspectRatoi: '1:1'\n",
        "5:5",
        "items[0].aspectRatoi",
        "did you mean 'aspectRatio'?",
    ),
    (
        "missing prompt points at the mapping",
        "items:\n  - id: a\n    modelID: gpt-image-2\n",
        "2:5",
        "items[0]",
        "missing required field 'prompt'",
    ),
    (
        "missing modelID",
        "items:\n  - id: a\n    prompt: p\n",
        "2:5",
        "items[0]",
        "missing required field 'modelID'",
    ),
    (
        "numImages zero",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, numImages: 0}\n",
        "2:57",
        "items[0].numImages",
        "must be from 1 to 4",
    ),
    (
        "numImages too many",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, numImages: 5}\n",
        "2:57",
        "items[0].numImages",
        "must be from 1 to 4",
    ),
    (
        "numImages wrong type",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, numImages: two}\n",
        "2:57",
        "items[0].numImages",
        "expected an integer, got the text 'two'",
    ),
    (
        "prompt wrong type",
        "items:\n  - {id: a, prompt: [p], modelID: gpt-image-2}\n",
        "2:21",
        "items[0].prompt",
        "expected text",
    ),
    (
        "unknown model, did you mean",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image2}\n",
        "2:33",
        "items[0].modelID",
        "did you mean 'gpt-image-2'?",
    ),
    (
        "video model in an image step",
        "items:\n  - {id: a, prompt: p, modelID: veo-3.1}\n",
        "2:33",
        "items[0].modelID",
        "is a video model",
    ),
    (
        "options family must match the model",
        "items:\n  - id: a\n    prompt: p\n    modelID: gpt-image-2\n"
        "    options: {gemini: {imageSize: 1K}}\n",
        "5:15",
        "items[0].options.gemini",
        "gpt-image-2 takes options.openai",
    ),
    (
        "too many reference images",
        "items:\n  - id: a\n    prompt: p\n    modelID: nanobanana\n"
        "    referenceImageURLs: [https://x/1, https://x/2, https://x/3, https://x/4]\n",
        "5:25",
        "items[0].referenceImageURLs",
        "at most 3 reference images, got 4",
    ),
    (
        "Veo duration",
        "items:\n  - id: a\n    video:\n      modelID: veo-3.1\n      prompt: p\n"
        "      options: {veo: {duration: 5}}\n",
        "6:33",
        "items[0].video.options.veo.duration",
        "must be one of 4, 6, 8",
    ),
    (
        "Veo duration from defaults is reported at the defaults",
        "defaults:\n  video:\n    options: {veo: {duration: 7}}\n"
        "items:\n  - {id: a, video: {modelID: veo-3.1, prompt: p}}\n",
        "3:31",
        "defaults.video.options.veo.duration",
        "must be one of 4, 6, 8",
    ),
    (
        "Veo reference_image needs duration 8",
        "items:\n  - id: a\n    video:\n      modelID: veo-3.1\n      prompt: p\n"
        "      referenceImages: [{url: 'https://x/a.jpg', role: reference_image}]\n"
        "      options: {veo: {duration: 4}}\n",
        "7:33",
        "items[0].video.options.veo.duration",
        "needs duration 8",
    ),
    (
        "unknown option key, did you mean",
        "items:\n  - id: a\n    video:\n      modelID: veo-3.1\n      prompt: p\n"
        "      options: {veo: {durration: 4}}\n",
        "6:23",
        "items[0].video.options.veo.durration",
        "did you mean 'duration'?",
    ),
    (
        "first_frame is filled by the chain",
        "items:\n  - id: a\n    modelID: gpt-image-2\n    prompt: p\n"
        "    video: {modelID: seedance-2.0, prompt: v, "
        "referenceImages: [{url: 'https://x/a.jpg', role: first_frame}]}\n",
        "5:65",
        "items[0].video.referenceImages[0]",
        "first frame is the upstream image",
    ),
    (
        "public model with a trained-model field",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, width: 512}\n",
        "2:46",
        "items[0].width",
        "applies to trained models only",
    ),
    (
        "undeclared trained model",
        "items:\n  - {id: a, prompt: p, modelID: '@bob'}\n",
        "2:33",
        "items[0].modelID",
        "no trained model 'bob' under models:",
    ),
    (
        "upscale true without an image",
        "items:\n  - {id: a, upscale: true}\n",
        "2:22",
        "items[0].upscale",
        "needs an image step",
    ),
    (
        "upscale imageID inside a chain",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, upscale: {imageID: x}}\n",
        "2:56",
        "items[0].upscale.imageID",
        "comes from the image step",
    ),
    ("item that does nothing", "items:\n  - {id: a}\n", "2:5", "items[0]", "the item does nothing"),
    (
        "extra repeating a known field",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, extra: {prompt: q}}\n",
        "2:54",
        "items[0].extra.prompt",
        "is a known field",
    ),
    (
        "unknown placeholder without rows",
        "items:\n  - {id: a, prompt: 'a {color} cup', modelID: gpt-image-2}\n",
        "2:21",
        "items[0].prompt",
        "unknown placeholder {color}",
    ),
    (
        "unmatched brace",
        "items:\n  - {id: a, prompt: 'a {color cup', modelID: gpt-image-2}\n",
        "2:21",
        "items[0].prompt",
        "unmatched '{'",
    ),
    (
        "matrix and item set the same field",
        "items:\n  - id: a\n    prompt: p\n    modelID: gpt-image-2\n"
        "    aspectRatio: '1:1'\n    matrix: {aspectRatio: ['1:1', '4:5']}\n",
        "6:28",
        "items[0].aspectRatio",
        "set on the item and in its matrix",
    ),
    (
        "matrix value from the matrix is checked there",
        "items:\n  - id: a\n    prompt: p\n    matrix: {modelID: [gpt-image-2, gpt-imag-3]}\n",
        "4:37",
        "items[0].matrix.modelID[1]",
        "unknown model",
    ),
    (
        "empty matrix list",
        "items:\n  - {id: a, prompt: p, modelID: gpt-image-2, matrix: {aspectRatio: []}}\n",
        "2:68",
        "items[0].matrix.aspectRatio",
        "non-empty list",
    ),
    (
        "placeholder in defaults",
        "defaults:\n  image: {modelID: gpt-image-2, prompt: '{x}'}\nitems:\n  - {id: a, prompt: p}\n",
        "2:41",
        "defaults.image.prompt",
        "not filled in defaults",
    ),
    (
        "unknown defaults section",
        "defaults:\n  imgae: {modelID: gpt-image-2}\nitems:\n  - {id: a, prompt: p, modelID: gpt-image-2}\n",
        "2:3",
        "defaults.imgae",
        "did you mean 'image'?",
    ),
    (
        "output template placeholder",
        "output: {path: '{item}/{stpe}-{n}.{ext}'}\nitems: [{id: a, prompt: p, modelID: gpt-image-2}]\n",
        "1:16",
        "output.path",
        "did you mean 'step'?",
    ),
    (
        "output template without ext",
        "output: {path: '{item}/{step}-{n}'}\nitems: [{id: a, prompt: p, modelID: gpt-image-2}]\n",
        "1:16",
        "output.path",
        "must end with",
    ),
    (
        "output template that cannot tell outputs apart",
        "output: {path: '{step}-{n}.{ext}', }\n"
        "items: [{id: a, prompt: p, modelID: gpt-image-2}, {id: b, prompt: p, modelID: gpt-image-2}]\n",
        "1:16",
        "output.path",
        "needs {n}, and {item} and {step} or {key}",
    ),
    (
        "an item named like a reserved top folder",
        "items: [{id: runs, prompt: p, modelID: gpt-image-2}]\n",
        "1:14",
        "items[0].id",
        "reserved",
    ),
    (
        "unknown price key",
        "prices: {gpt-image2: 4}\nitems: [{id: a, prompt: p, modelID: gpt-image-2}]\n",
        "1:10",
        "prices.gpt-image2",
        "did you mean 'gpt-image-2'?",
    ),
    (
        "negative price",
        "prices: {image: -1}\nitems: [{id: a, prompt: p, modelID: gpt-image-2}]\n",
        "1:17",
        "prices.image",
        "a number ≥ 0",
    ),
    (
        "unsafe name",
        "name: ../up\nitems: [{id: a, prompt: p, modelID: gpt-image-2}]\n",
        "1:7",
        "name",
        "contains a path separator",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "path", "fragment"),
    [case[1:] for case in INVALID if case[2]],
    ids=[case[0] for case in INVALID if case[2]],
)
def test_invalid_manifest_points_at_the_problem(
    tmp_path: Path, text: str, where: str, path: str, fragment: str
) -> None:
    """The first problem is at exactly this line:column and field path, and says why."""
    manifest = write(tmp_path, text)
    found = problems(manifest)
    assert (found[0].location, found[0].path) == (f"{manifest}:{where}", path), found
    assert fragment in found[0].message


@pytest.mark.parametrize(
    ("item_id", "reason"),
    [
        ("..", "relative path component"),
        ("a/b", "path separator"),
        ("/abs", "path separator"),
        ("../../x", "path separator"),
        ("a\\\\b", "path separator"),
        ("a\\0b", "control or invisible character U+0000"),
        ("a\\u202eb", "U+202E"),
        (".hidden", "starts with a dot"),
        ("x" * 300, "300 characters long"),
        ("CON", "reserved device name"),
        ("con.txt", "reserved device name"),
        ("trailing.", "ends with a dot"),
        ("a:b", "Windows does not allow"),
        ("", "must not be empty"),
    ],
)
def test_unsafe_ids_are_errors_not_rewrites(tmp_path: Path, item_id: str, reason: str) -> None:
    """Ids name output folders: anything that is not one safe segment everywhere is refused."""
    manifest = write(tmp_path, f'items:\n  - {{id: "{item_id}", prompt: p, modelID: gpt-image-2}}\n')
    (problem,) = problems(manifest)
    assert (problem.location, problem.path) == (f"{manifest}:2:10", "items[0].id")
    assert reason in problem.message


def test_duplicate_ids_name_both_places(tmp_path: Path) -> None:
    """A duplicate id (also after expansion, also differing only in case) names both locations."""
    manifest = write(
        tmp_path,
        """\
        items:
          - {id: a, prompt: p, modelID: gpt-image-2}
          - {id: a, prompt: q, modelID: gpt-image-2}
          - {id: A, prompt: r, modelID: gpt-image-2}
          - {id: hero, prompt: p, modelID: gpt-image-2, matrix: {preset: ["a b", "A-B"]}}
        """,
    )
    found = problems(manifest)
    assert [(p.location, p.path) for p in found] == [
        (f"{manifest}:3:10", "items[1].id"),
        (f"{manifest}:4:10", "items[2].id"),
        (f"{manifest}:5:10", "items[3].id"),
    ]
    assert f"duplicate item id 'a' (first at {manifest}:2:10)" in found[0].message
    assert f"item id 'A' differs only in case from 'a' (at {manifest}:2:10)" in found[1].message
    assert f"duplicate item id 'hero-a-b' (first at {manifest}:5:10)" in found[2].message


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    """Independent mistakes in different places are all listed, in file order."""
    manifest = write(
        tmp_path,
        """\
        version: 1
        defaults:
          image: {modelID: gpt-image-2, quality: high}
        items:
          - {id: a, prompt: p, numImages: 9}
          - {id: b, video: {modelID: veo-3.1, prompt: p, options: {veo: {duration: 5}}}}
          - {id: c/d, prompt: p}
        """,
    )
    assert [(p.location.rsplit(":", 2)[1], p.path) for p in problems(manifest)] == [
        ("3", "defaults.image.quality"),
        ("5", "items[0].numImages"),
        ("6", "items[1].video.options.veo.duration"),
        ("7", "items[2].id"),
    ]


def test_photos_folder_is_checked(tmp_path: Path) -> None:
    """A models: entry needs a folder of 12–20 accepted images; the error names the folder."""
    (tmp_path / "few").mkdir()
    for i in range(3):
        (tmp_path / "few" / f"{i}.png").write_bytes(b"x")
    manifest = write(
        tmp_path,
        """\
        models:
          ava: {gender: Female, photos: few}
          bob: {gender: male, photos: missing}
        items:
          - {id: a, modelID: "@ava", prompt: p}
        """,
    )
    found = problems(manifest)
    assert [(p.location, p.path) for p in found[:3]] == [
        (f"{manifest}:2:33", "models.ava.photos"),
        (f"{manifest}:3:17", "models.bob.gender"),
        (f"{manifest}:3:31", "models.bob.photos"),
    ]
    assert "holds 3 images; training needs 12 to 20" in found[0].message
    assert str(tmp_path / "few") in found[0].message


def test_missing_local_reference_image(tmp_path: Path) -> None:
    """A local reference image that does not exist is an error at its value."""
    manifest = write(
        tmp_path, "items:\n  - {id: a, prompt: p, modelID: nanobanana, referenceImageURLs: [nope.png]}\n"
    )
    (problem,) = problems(manifest)
    assert (problem.location, problem.path) == (f"{manifest}:2:66", "items[0].referenceImageURLs[0]")
    assert "no such image file" in problem.message


def test_output_collisions_are_found_before_the_run(tmp_path: Path) -> None:
    """Two outputs rendered to one path are refused before the run, naming both."""
    manifest = write(
        tmp_path,
        """\
        output: {path: "{item}{n}/{step}.{ext}"}
        defaults: {video: {prompt: v}}
        items:
          - {id: a, prompt: p, modelID: gpt-image-2, numImages: 3, video: {modelID: veo-3.1, numVideos: 4}}
          - {id: a1, video: {modelID: veo-3.1, prompt: v}}
        """,
    )
    (problem,) = problems(manifest)
    assert (problem.location, problem.path) == (f"{manifest}:1:16", "output.path")
    assert (
        problem.message
        == "outputs collide: a video 11 and a1 video 1 would both be written to 'a11/video.mp4'"
    )


def test_problems_are_in_file_order_and_capped(tmp_path: Path) -> None:
    """Problems come sorted by file, line and column; past 200 the rest are counted, not listed."""
    rows = "sku,count\n" + "".join(f"S{i},x\n" for i in range(300))
    (tmp_path / "p.csv").write_text(rows, encoding="utf-8")
    manifest = write(
        tmp_path,
        """\
        rows: p.csv
        items:
          - {id: "{sku}", modelID: gpt-image-2, prompt: p, numImages: "{count}"}
          - {id: b, modelID: gpt-image-2, prompt: p, aspectRatio: wide}
        """,
    )
    found = problems(manifest)
    assert len(found) == 201
    assert (found[0].location, found[0].path) == (f"{manifest}:4:59", "items[1].aspectRatio")
    assert [p.location for p in found[1:4]] == [f"{tmp_path / 'p.csv'}:{n}" for n in (2, 3, 4)]
    assert found[-1].message == "… and 101 more problems not shown"


def test_declared_ids_are_unique_even_beside_a_matrix_item(tmp_path: Path) -> None:
    """A matrix item ``hero`` and a plain item ``hero`` (folders ``hero-…`` and ``hero``) are refused."""
    manifest = write(
        tmp_path,
        """\
        items:
          - {id: hero, prompt: p, modelID: gpt-image-2, matrix: {aspectRatio: ["1:1", "9:16"]}}
          - {id: hero, prompt: q, modelID: gpt-image-2}
          - {id: Hero, prompt: r, modelID: gpt-image-2, matrix: {preset: [studio]}}
        """,
    )
    rule = "declared ids must be unique, even where a matrix names the variants hero-…"
    assert [(p.location, p.path, p.message) for p in problems(manifest)] == [
        (f"{manifest}:3:10", "items[1].id", f"duplicate item id 'hero' (first at {manifest}:2:10); {rule}"),
        (
            f"{manifest}:4:10",
            "items[2].id",
            f"item id 'Hero' differs only in case from 'hero' (at {manifest}:2:10); {rule}",
        ),
    ]


def test_declared_row_templates_and_their_rows_collide_once_each(tmp_path: Path) -> None:
    """Two items declaring ``perfume-{sku}`` are one problem at the item, not one per row; ids that
    different templates make equal for some row are reported at that row, naming the first row."""
    (tmp_path / "p.csv").write_text("sku,name\nA,B\nC,A\n", encoding="utf-8")
    manifest = write(
        tmp_path,
        """\
        rows: p.csv
        items:
          - {id: "perfume-{sku}", prompt: "p {name}", modelID: gpt-image-2}
          - {id: "perfume-{sku}", prompt: "q {name}", modelID: gpt-image-2}
          - {id: "perfume-{name}", prompt: "r {sku}", modelID: gpt-image-2}
        """,
    )
    rows = tmp_path / "p.csv"
    assert [(p.location, p.path, p.message) for p in problems(manifest)] == [
        (
            f"{manifest}:4:10",
            "items[1].id",
            f"duplicate item id 'perfume-{{sku}}' (first at {manifest}:3:10); "
            "ids must be unique, as they name output folders",
        ),
        (
            f"{rows}:3",
            "items[2].id",
            f"duplicate item id 'perfume-A' (first at {rows}:2); ids must be unique, as they name output "
            f"folders (from column 'name'; template at {manifest}:5:10)",
        ),
    ]
