"""Time `ctbmd run` against a plain SimpleITK read of the same input, with a per-stage breakdown.

Inputs:

* the 3 mm example (``../shared/data/ts_example_ct/ct.nii.gz``);
* its full-resolution version: the example resampled (B-spline) to 0.8 x 0.8 x 1.0 mm,
  about 458 x 379 x 336 voxels, written as compressed NIfTI;
* the LIDC-IDRI-0001 chest CT (DICOM series, 133 slices of 512 x 512).

For each input it prints, as the median of ``--repeat`` runs (default 3), each in a fresh
Python process so that imports count as they do for a user:

* ``read s``: a plain SimpleITK read (``sitk.ReadImage``, or ``ImageSeriesReader`` for DICOM);
* ``run s``: ``ctbmd run INPUT --out DIR --quiet``;
* their ratio, the CPU seconds (user + system) of the ``ctbmd run`` process, which a busy
  shared machine inflates less than the wall time, and its peak resident memory (MB).

Then a per-stage breakdown (seconds, median of the same number of runs) of
:func:`ctbmd.api.run`, the code behind ``ctbmd run``: ``import`` (Python start and
the ctbmd imports), then each stage (read, segment, roi, calibrate, classify, report; the
report stage writes the files). The reference tissues are sampled in a second thread while the ROIs
are measured, so ``roi`` holds both and ``calibrate`` only what is left of the sampling and the fit.

Targets (issue 13): full resolution <= 6 x the plain read with peak RSS <= 1.5 GB; the 3 mm
example <= 3 s. Run another ctbmd tree (e.g. before a change) with ``PYTHONPATH=OLD/src``.

Usage: python benchmarks/run_time.py [--repeat N] [--only example|full|lidc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = DATA / "ts_example_ct" / "ct.nii.gz"
LIDC = DATA / "lidc_idri_0001_chest" / "dicom"
STAGES = ("import", "read", "segment", "roi", "calibrate", "classify", "report")

READ_CODE = """
import os, sys, SimpleITK as sitk
path = sys.argv[1]
if os.path.isdir(path):
    r = sitk.ImageSeriesReader(); r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path)); img = r.Execute()
else:
    img = sitk.ReadImage(path)
sitk.GetArrayViewFromImage(img).sum()
"""

RUN_CODE = """
import resource, sys
from ctbmd.cli import app
rc = 1
try:
    rc = app(sys.argv[1:], standalone_mode=False)
finally:
    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc if isinstance(rc, int) else 0)
"""

STAGE_CODE = """
import json, sys, time
t0 = time.perf_counter()
from ctbmd.api import run
stamps = [('import', t0), ('read', time.perf_counter())]
def tick(stage):
    now = time.perf_counter()
    if stage == 'read':
        return
    stamps.append((stage, now))
run(sys.argv[1], sys.argv[2], progress=tick)
stamps.append(('end', time.perf_counter()))
print(json.dumps({a: b - ta for (a, ta), (_, b) in zip(stamps, stamps[1:])}))
"""


def full_resolution(src: Path, dst: Path, spacing=(0.8, 0.8, 1.0)) -> tuple[int, ...]:
    """Resample ``src`` (B-spline) to ``spacing`` mm and write it as compressed int16 NIfTI; return its size."""
    img = sitk.ReadImage(str(src), sitk.sitkFloat32)
    size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    origin = img.TransformContinuousIndexToPhysicalPoint([(t / s - 1) / 2 for s, t in zip(img.GetSpacing(), spacing)])
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkBSpline, origin, spacing, img.GetDirection(), -1024.0)
    sitk.WriteImage(sitk.Cast(sitk.Round(out), sitk.sitkInt16), str(dst), useCompression=True)
    return tuple(size)


def _wall(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    return time.perf_counter() - t, proc


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plain_read(path: Path) -> float:
    """Wall seconds of a fresh Python process that reads ``path`` with SimpleITK."""
    wall, proc = _wall([sys.executable, "-c", READ_CODE, str(path)])
    if proc.returncode != 0:
        raise SystemExit(f"plain read failed on {path}: {proc.stderr.strip()[-400:]}")
    return wall


def ctbmd_run(path: Path, out: Path) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS (MB), result.json and CPU seconds of ``ctbmd run path --out out --quiet``."""
    cpu0 = _cpu_children()
    wall, proc = _wall([sys.executable, "-c", RUN_CODE, "run", str(path), "--out", str(out), "--quiet"])
    cpu = _cpu_children() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"ctbmd run failed on {path}: {proc.stderr.strip()[-400:]}")
    peak_kb = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KB"))
    return wall, peak_kb / 1024.0, json.loads((out / "result.json").read_text()), cpu


def stage_times(path: Path, out: Path) -> dict[str, float]:
    """Seconds per stage of :func:`ctbmd.api.run` in a fresh process (``import`` included)."""
    _, proc = _wall([sys.executable, "-c", STAGE_CODE, str(path), str(out)])
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed on {path}: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed (default 3)")
    ap.add_argument("--only", choices=("example", "full", "lidc"), action="append")
    args = ap.parse_args(argv)
    import ctbmd

    print(f"machine: {os.cpu_count()} cores; ctbmd {ctbmd.__version__} from {Path(ctbmd.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = tmp / "ct_full.nii.gz"
        cases = {"example": ("example 3 mm", EXAMPLE), "full": ("full-res 0.8x0.8x1.0 mm", full),
                 "lidc": ("LIDC DICOM 0.7x0.7x2.5 mm", LIDC)}
        chosen = args.only or list(cases)
        if "full" in chosen:
            full_resolution(EXAMPLE, full)
        rows, stages = [], {}
        for key in chosen:
            name, path = cases[key]
            reads = [plain_read(path) for _ in range(args.repeat)]
            runs = [ctbmd_run(path, tmp / f"out_{key}_{r}") for r in range(args.repeat)]
            per_stage = [stage_times(path, tmp / f"stage_{key}_{r}") for r in range(args.repeat)]
            read = statistics.median(reads)
            run = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[3] for r in runs)
            peak = max(r[1] for r in runs)
            levels = " ".join(lv["level"] for lv in runs[0][2]["levels"])
            rows.append((name, read, run, cpu, peak, levels))
            stages[name] = {s: statistics.median(d.get(s, 0.0) for d in per_stage) for s in STAGES}
            stages[name]["total"] = statistics.median(sum(d.values()) for d in per_stage)
        print(f"\n{'input':<28}{'read s':>8}{'run s':>8}{'ratio':>7}{'run cpu s':>10}{'peak MB':>9}  levels")
        for name, read, run, cpu, peak, levels in rows:
            print(f"{name:<28}{read:8.2f}{run:8.2f}{run / read:7.1f}{cpu:10.2f}{peak:9.0f}  {levels}")
        print(f"\nper stage, seconds (median of {args.repeat}; ctbmd.api.run in a fresh process)")
        print(f"{'input':<28}" + "".join(f"{s:>10}" for s in STAGES) + f"{'total':>10}")
        for name, d in stages.items():
            print(f"{name:<28}" + "".join(f"{d[s]:10.2f}" for s in STAGES) + f"{d['total']:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
