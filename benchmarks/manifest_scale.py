"""How long a big catalog takes to load, expand and validate (targets: 100,000 rows under 5 s,
1,000,000 rows under 15 s, on 2 cores).

Run ``python benchmarks/manifest_scale.py [ROWS] [--full]``. It writes a products CSV and a
catalog manifest (an image step with defaults, placeholders in id and prompt, an upscale per
image) into a temporary folder and times :func:`survey_manifest`, what ``plan`` and ``validate``
read (every row checked, the rows a full load would relay only counted), with the verdict and
the peak resident memory. ``--full`` also times :func:`load_manifest`, which builds every unit
(what a run without a state needs). A benchmark rather than a timed test, so a busy CI machine
cannot make the suite flaky.
"""

from __future__ import annotations

import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

from pipeline.manifest.load import load_manifest
from pipeline.manifest.survey import survey_manifest

TARGET_S = 5.0  # up to 100,000 rows (issue 6)
TARGET_1M_S = 15.0  # 1,000,000 rows, 2,000,000 units (issue 15)

MANIFEST = """\
version: 1
name: scale
defaults:
  image:
    modelID: gpt-image-2
    aspectRatio: "4:5"
    numImages: 1
    options: {openai: {imageSize: 1K, outputFormat: jpeg, quality: high}}
rows: products.csv
items:
  - id: "{sku}"
    prompt: "A studio product photo of {name}, {color}, on a seamless white background"
    upscale: true
"""


def write_catalog(folder: Path, rows: int) -> Path:
    """The manifest and its CSV of ``rows`` products."""
    colors = ("red", "navy", "white", "black", "sand", "olive")
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "color"])
        for i in range(rows):
            writer.writerow([f"sku-{i:06d}", f"Product {i}", colors[i % len(colors)]])
    manifest = folder / "catalog.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    return manifest


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if a != "--full"]
    rows = int(args[0]) if args else 100_000
    target = TARGET_S if rows <= 100_000 else TARGET_1M_S
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = write_catalog(Path(tmp), rows)
        start = time.perf_counter()
        survey = survey_manifest(manifest_path)
        elapsed = time.perf_counter() - start
        verdict = "PASS" if elapsed < target else "FAIL"
        print(
            f"manifest_scale: {rows} rows, {survey.unit_count} units, survey (plan, validate) "
            f"{elapsed:.2f} s (target {target:.2f} s) {verdict}; peak RSS {_peak_mib():.0f} MiB"
        )
        del survey
        if "--full" in argv:
            start = time.perf_counter()
            manifest = load_manifest(manifest_path)
            print(
                f"manifest_scale: full load (every unit built) {time.perf_counter() - start:.2f} s, "
                f"{len(manifest.units)} units; peak RSS {_peak_mib():.0f} MiB"
            )
    return 0 if verdict == "PASS" else 1


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main(sys.argv))
