"""Cost of verified reads (issue 15) on a BraTS-sized case: 4 modalities of 240 x 240 x 155 voxels, .nii.gz.

Compares, in the same process and alternating, reading the four files as ``cldl.files.images.read_channels`` does now
(one decompression with the gzip checksum and length checked, NaN/Inf counted on the same array) with the read before
the check (ITK's reader; for float files the NaN/Inf count re-read the file with nibabel, as the engine did), and
reports the median of ``--repeats`` rounds. Files are float32 (35.7 MB each decompressed, as in the issue) and
int16 (BraTS's own type).

    python benchmarks/read_verify.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from _common import command_line, machine_summary

from cldl.data.phantoms import brats_phantom
from cldl.files.images import read_channels, write_image

SHAPE = (155, 240, 240)


def unverified_read(path: Path) -> np.ndarray:
    """The read before issue 15: ITK's reader, plus nibabel's NaN/Inf count for float files."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        data = np.asanyarray(nib.load(str(path)).dataobj)
        int(data.size - np.count_nonzero(np.isfinite(data)))
    return array


def verified_read(path: Path) -> np.ndarray:
    """The read now."""
    return read_channels(path, np.float32)[0][0]


def main() -> None:
    """Write the case in both types, time both readers, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    case = brats_phantom(5, shape=SHAPE)
    print(f"command: {command_line()}\nmachine: {machine_summary()}\n")
    print("| voxel type | file sizes (4 files) | before (ITK read) | now (verified read) | now / before |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for dtype in (np.float32, np.int16):
            paths = []
            for index, modality in enumerate(("flair", "t1", "t1ce", "t2")):
                array = case.images[index]
                if dtype == np.int16:
                    array = np.round(array / max(float(np.abs(array).max()), 1e-6) * 3000)
                paths.append(write_image(array.astype(dtype), case.geometry, Path(folder) / f"{modality}.nii.gz"))
            for path in paths:  # equal results, and the page cache warm for both
                assert np.array_equal(unverified_read(path), verified_read(path))
            times: dict[str, list[float]] = {"before": [], "now": []}
            for _ in range(args.repeats):
                for name, reader in (("before", unverified_read), ("now", verified_read)):
                    started = time.perf_counter()
                    for path in paths:
                        reader(path)
                    times[name].append(time.perf_counter() - started)
            before, now = statistics.median(times["before"]), statistics.median(times["now"])
            size = sum(p.stat().st_size for p in paths) / 1e6
            print(f"| {np.dtype(dtype).name} | {size:.1f} MB | {before:.3f} s | {now:.3f} s | {now / before:.2f}x |")


if __name__ == "__main__":
    main()
