"""Time `ctbmd run` on the example CT and on a full-resolution resample of it.

The full-resolution volume is the 3 mm example resampled (B-spline) to 0.8 x 0.8 x 1.0 mm
(about 458 x 379 x 336 voxels). Prints wall seconds and the peak resident memory of the
`ctbmd run` process. Target (issue 2): <= 30 s and <= 4 GB at full resolution on 2 cores.

Usage: python benchmarks/run_time.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ts_example_ct" / "ct.nii.gz"


def full_resolution(src: Path, dst: Path, spacing=(0.8, 0.8, 1.0)) -> tuple[int, ...]:
    img = sitk.ReadImage(str(src), sitk.sitkFloat32)
    size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    origin = img.TransformContinuousIndexToPhysicalPoint([(t / s - 1) / 2 for s, t in zip(img.GetSpacing(), spacing)])
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkBSpline, origin, spacing, img.GetDirection(), -1024.0)
    sitk.WriteImage(sitk.Cast(sitk.Round(out), sitk.sitkInt16), str(dst), useCompression=True)
    return tuple(size)


def timed_run(path: Path, out: Path) -> tuple[float, float, dict]:
    code = ("import resource, sys; from ctbmd.cli import app\n"
            "rc = 1\n"
            "try:\n    rc = app(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc if isinstance(rc, int) else 0)\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "run", str(path), "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"ctbmd run failed on {path}: {proc.stderr.strip()}")
    peak_kb = next(int(l.split()[1]) for l in proc.stderr.splitlines() if l.startswith("PEAK_KB"))
    return wall, peak_kb / 1024.0, json.loads((out / "result.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = tmp / "ct_full.nii.gz"
        size = full_resolution(EXAMPLE, full)
        print(f"{'case':<28}{'voxels':>18}{'wall s':>9}{'peak MB':>9}  levels")
        for name, path, shape in (("example 3 mm", EXAMPLE, (122, 101, 112)), ("full-res 0.8x0.8x1.0 mm", full, size)):
            for r in range(args.repeat):
                wall, peak, result = timed_run(path, tmp / f"out_{name[:4]}_{r}")
                levels = " ".join(lv["level"] for lv in result["levels"])
                print(f"{name:<28}{'x'.join(map(str, shape)):>18}{wall:9.1f}{peak:9.0f}  {levels}")


if __name__ == "__main__":
    main()
