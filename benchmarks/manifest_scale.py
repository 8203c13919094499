"""How long a 100,000-row catalog takes to load, expand and validate (target: under 5 s on 2 cores).

Run ``python benchmarks/manifest_scale.py [ROWS]``. It writes a products CSV and a
catalog manifest (an image step with defaults, placeholders in id and prompt, an
upscale per image) into a temporary folder, times :func:`load_manifest` and prints
one line with the verdict and the peak resident memory. A benchmark rather than a
timed test, so a busy CI machine cannot make the suite flaky.
"""

from __future__ import annotations

import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

from pipeline.manifest.load import load_manifest

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
    rows = int(argv[1]) if len(argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = write_catalog(Path(tmp), rows)
        start = time.perf_counter()
        manifest = load_manifest(manifest_path)
        elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    target = TARGET_S if rows <= 100_000 else TARGET_1M_S
    verdict = "PASS" if elapsed < target else "FAIL"
    print(
        f"manifest_scale: {rows} rows, {len(manifest.units)} units, {elapsed:.2f} s "
        f"(target {target:.2f} s) {verdict}; peak RSS {peak_mib:.0f} MiB"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
