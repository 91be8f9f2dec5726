"""Time each class of tests/hostile_images.py through a decoder pool and print its cost: answer, time, memory.

    .venv/bin/python bench/bench_hostile.py

Every input goes through both pipelines (profile picture, flyer image) of a pool with the default
settings, then the scan bombs once more with the scan check lifted, so that they meet the decode
deadline. "peak MB" is the highest decoder VmHWM of the class (reset before each decode).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.decoder import DecoderPool, DecoderSettings  # noqa: E402
from service.pictures import PictureError, process_flyer_image, process_profile_picture  # noqa: E402
from tests.hostile_images import Hostile, corpus, mutations, scan_bomb  # noqa: E402


def main() -> int:
    settings = DecoderSettings()
    entries = [(name, hostile) for name, hostile in corpus().items()]
    entries += [(hostile.kind, hostile) for hostile in mutations(200)]
    rows = _measure(settings, entries)
    lifted = replace(settings, max_scans=10**6)
    rows.update({f"{kind} (scan check lifted)": row for kind, row in _measure(lifted, [
        ("scan bomb 500", Hostile("scan bomb", scan_bomb(500), "4xx")),
        ("scan bomb 3000", Hostile("scan bomb", scan_bomb(3000), "4xx"))]).items()})
    print(f"hostile uploads through a decoder pool ({settings.workers} children, {settings.timeout:g} s deadline, "
          f"RLIMIT_AS {settings.memory_mb} MB), both pipelines per input")
    header = f"{'class':<38}{'inputs':>7}{'refused':>8}{'accepted':>9}{'max ms':>8}{'median ms':>10}{'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for kind, row in rows.items():
        times = sorted(row["times"])
        peak = f"{max(row['peaks']) / 1024:.0f}" if row["peaks"] else "-"
        print(f"{kind:<38}{row['inputs']:>7}{row['refused']:>8}{row['accepted']:>9}{times[-1] * 1000:>8.0f}"
              f"{times[len(times) // 2] * 1000:>10.0f}{peak:>9}")
    for kind, row in rows.items():
        for outcome, count in sorted(row["outcomes"].items()):
            print(f"  {kind}: {count} x {outcome}")
    return 0


def _measure(settings: DecoderSettings, entries: list[tuple[str, Hostile]]) -> dict[str, dict]:
    pool = DecoderPool(settings)
    pool.warm()
    time.sleep(1.0)  # let the children import Pillow
    rows: dict[str, dict] = defaultdict(lambda: {"inputs": 0, "refused": 0, "accepted": 0, "times": [], "peaks": [],
                                                 "outcomes": defaultdict(int)})
    try:
        for _, hostile in entries:
            row = rows[hostile.kind]
            row["inputs"] += 1
            for function in (process_profile_picture, process_flyer_image):
                mark = pool.decodes
                start = time.perf_counter()
                try:
                    pool.run(function, hostile.data, max_bytes=5 * 2**20)
                    row["accepted"] += 1
                    outcome = "accepted"
                except PictureError as error:
                    row["refused"] += 1
                    outcome = f"{error.status} {error.message}"
                row["times"].append(time.perf_counter() - start)
                row["peaks"] += [report.peak_rss_kb for report in pool.reports_since(mark)]
                row["outcomes"][outcome] += 1
    finally:
        pool.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
