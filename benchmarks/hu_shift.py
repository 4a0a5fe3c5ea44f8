"""Real-anatomy check: shift the HU of the L1-L4 trabecular bone of ts_example_ct and measure the change.

Usage::

    python benchmarks/hu_shift.py [--shifts -60,-40,-20,20,40]

The vertebral bodies come from TotalSegmentator's ``vertebral_body_and_discs``
(label 1) split by ``vertebrae_total`` (L1-L4), an independent segmentation, so
the region changed is not the region ctbmd measures. Inside each body, voxels
more than 2 mm from its surface get the shift (the cortex and everything else
keep their HU; :func:`ctbmd.simulate.shift_trabecular_hu`). Each shifted scan
is written as NIfTI and run through the full pipeline (builtin segmenter); the
measured change per level is its trabecular median minus the unshifted one.
Prints a table of applied versus measured change and the worst deviation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ts_example_ct"
LEVELS = ("L1", "L2", "L3", "L4")


def shifted_levels(shifts: list[float], segmenter: str = "builtin") -> dict[float, dict[str, float | None]]:
    """Trabecular HU medians of L1-L4 for each applied shift (0 included); None where not measured.

    ``segmenter`` is ``builtin`` or ``labels`` (TotalSegmentator's ``vertebrae_total`` given as labels).
    """
    from ctbmd.errors import CtbmdError
    from ctbmd.io import array_to_image, read_ct, read_label_map, write_image_atomic
    from ctbmd.api import run
    from ctbmd.segment.labelmaps import to_verse
    from ctbmd.simulate import shift_trabecular_hu
    from ctbmd.types import VERSE_LABELS

    ct = read_ct(DATA / "ct.nii.gz")
    body = read_label_map(DATA / "vertebral_body_and_discs.nii.gz", ct) == 1
    levels = to_verse(read_label_map(DATA / "vertebrae_total.nii.gz", ct), "total")
    bodies = body & np.isin(levels, [VERSE_LABELS[lv] for lv in LEVELS])
    out: dict[float, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for delta in [0.0, *shifts]:
            hu = shift_trabecular_hu(ct.hu, bodies, ct.spacing_mm, delta)
            path = Path(tmp) / f"shift_{delta:+.0f}.nii.gz"
            write_image_atomic(array_to_image(hu, ct.grid), path)
            extra = {"labels": DATA / "vertebrae_total.nii.gz"} if segmenter == "labels" else {}
            try:
                result = run(path, Path(tmp) / f"out_{delta:+.0f}", segmenter=segmenter, **extra).to_dict()
            except CtbmdError as exc:
                print(f"  shift {delta:+.0f} HU, {segmenter}: {exc.one_line()}")
                out[delta] = {lv: None for lv in LEVELS}
                continue
            med = {lv["level"]: lv["trabecular_hu_median"] for lv in result["levels"]}
            out[delta] = {lv: med.get(lv) for lv in LEVELS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifts", default="-60,-40,-20,20,40")
    a = ap.parse_args(argv)
    shifts = [float(s) for s in a.shifts.split(",")]
    for segmenter in ("labels", "builtin"):
        res = shifted_levels(shifts, segmenter)
        base = res[0.0]
        print(f"\n{segmenter} segmentation: measured change of the trabecular median (HU)")
        print("applied  " + "  ".join(f"{lv:>8s}" for lv in LEVELS))
        worst = 0.0
        for d in shifts:
            cells = []
            for lv in LEVELS:
                if res[d][lv] is None or base[lv] is None:
                    cells.append(f"{'missing':>8s}")
                    continue
                m = res[d][lv] - base[lv]
                worst = max(worst, abs(m - d))
                cells.append(f"{m:+8.1f}")
            print(f"{d:+7.0f}  " + "  ".join(cells))
        print("unshifted medians: " + ", ".join(f"{lv} {base[lv]}" for lv in LEVELS))
        n_missing = sum(res[d][lv] is None for d in shifts for lv in LEVELS)
        print(f"worst |measured - applied| = {worst:.1f} HU over the measured cells (target <= 2); "
              f"cells not measured: {n_missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
