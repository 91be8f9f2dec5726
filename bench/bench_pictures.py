"""Time process_profile_picture against a naive full-decode pipeline on generated camera-like JPEGs.

    .venv/bin/python bench/bench_pictures.py            # 20 runs per case
    .venv/bin/python bench/bench_pictures.py --quick    # 3 runs, for a CI smoke test
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from service.pictures import JPEG_OPTIONS, process_profile_picture  # noqa: E402
from tests.images import photo_jpeg  # noqa: E402

TARGET_SPEEDUP = 3.0
TARGET_MEDIAN_MS = 40.0
LANCZOS = Image.Resampling.LANCZOS


def naive(data: bytes) -> tuple[bytes, bytes]:
    """Full decode, exif_transpose, LANCZOS to 500 wide and a 128 thumbnail from the full image."""
    img = ImageOps.exif_transpose(Image.open(BytesIO(data))).convert("RGB")
    full = img.resize((500, round(img.height * 500 / img.width)), LANCZOS)
    thumbnail = ImageOps.fit(img, (128, 128), LANCZOS)
    return _jpeg(full), _jpeg(thumbnail)


def ours(data: bytes) -> tuple[bytes, bytes]:
    """The service's pipeline."""
    result = process_profile_picture(data)
    return result.full.data, result.thumbnail.data


def _jpeg(img: Image.Image) -> bytes:
    buffer = BytesIO()
    img.save(buffer, "JPEG", **JPEG_OPTIONS)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(data)).convert("RGB"), dtype=np.float64)


def _psnr(data: bytes, reference: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((_decode(data) - reference) ** 2)))


def _times(function: Callable[[bytes], tuple[bytes, bytes]], data: bytes, runs: int) -> list[float]:
    function(data)  # warm-up: plugin imports, allocator
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function(data)
        samples.append((time.perf_counter() - start) * 1000)
    return sorted(samples)


def _p95(samples: list[float]) -> float:
    return samples[max(0, math.ceil(0.95 * len(samples)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 runs per case, for a CI smoke test")
    args = parser.parse_args()
    runs = 3 if args.quick else max(1, args.runs)

    cases = [
        ("12 MP ~2 MB", photo_jpeg((4000, 3000)), True),
        ("12 MP ~2 MB, EXIF 6", photo_jpeg((4000, 3000), orientation=6), True),
        ("3 MP ~500 KB", photo_jpeg((2000, 1500)), False),
        ("3 MP ~500 KB, EXIF 6", photo_jpeg((2000, 1500), orientation=6), False),
    ]
    header = (f"{'case':<22}{'input':>9}{'ours med':>10}{'p95':>8}{'naive med':>11}{'p95':>8}{'naive/ours':>12}"
              f"{'out ours':>10}{'out naive':>11}{'reduction':>11}{'dPSNR':>8}")
    print(f"profile picture (500 px wide + 128 thumbnail), {runs} runs per case, times in ms, sizes in KB")
    print(header)
    print("-" * len(header))
    verdicts = []
    for name, data, targeted in cases:
        mine, theirs = _times(ours, data, runs), _times(naive, data, runs)
        (full, thumb), (naive_full, naive_thumb) = ours(data), naive(data)
        reference_img = ImageOps.exif_transpose(Image.open(BytesIO(data))).convert("RGB")
        reference = np.asarray(reference_img.resize((500, round(reference_img.height * 500 / reference_img.width)),
                                                    LANCZOS), dtype=np.float64)
        delta_psnr = _psnr(full, reference) - _psnr(naive_full, reference)
        ratio = statistics.median(theirs) / statistics.median(mine)
        out, naive_out = len(full) + len(thumb), len(naive_full) + len(naive_thumb)
        print(f"{name:<22}{len(data) / 1024:>9.0f}{statistics.median(mine):>10.1f}{_p95(mine):>8.1f}"
              f"{statistics.median(theirs):>11.1f}{_p95(theirs):>8.1f}{ratio:>11.1f}x"
              f"{out / 1024:>10.1f}{naive_out / 1024:>11.1f}{100 * (1 - out / len(data)):>10.1f}%{delta_psnr:>+8.2f}")
        if targeted:
            verdicts.append((name, ratio, statistics.median(mine)))
    print()
    print(f"targets on the 2 MB image: ours >= {TARGET_SPEEDUP:g}x faster than naive and < {TARGET_MEDIAN_MS:g} ms "
          "median (dPSNR: ours minus naive against an unencoded full-decode LANCZOS reference)")
    for name, ratio, median in verdicts:
        ok = ratio >= TARGET_SPEEDUP and median < TARGET_MEDIAN_MS
        print(f"  {name:<22}{ratio:>6.1f}x  {median:>6.1f} ms  {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
