"""Batch throughput: scans per hour of `ctbmd batch` with 1 and 2 local workers, and on a Dask scheduler.

Makes ``--n`` seeded phantoms (:func:`ctbmd.simulate.cohort_specs`: 80-140 kV, BMD 40-200 mg/cm³,
1.5 mm pixels, 3 mm slices, one in six as a DICOM series), writes a manifest of their CTs and kVp,
then runs ``ctbmd batch --manifest`` into a fresh folder in each mode, one after another on the same
machine, ``--repeat`` times:

* ``--workers 1`` and ``--workers 2``: a LocalCluster of that many single-threaded worker processes
  (the batch default: ``--workers`` is the number of cores used);
* ``--workers 1`` with ``CTBMD_THREADS=2``: one worker using the two threads ``ctbmd run`` uses alone
  (what one process can do with two cores, for comparison);
* ``--scheduler`` on a LocalCluster of 2 processes started here (the path a hospital cluster takes).

Prints seconds, scans per hour and the speed-up over ``--workers 1`` (median of the repeats; the wall
time of the whole command, Python start, discovery and tables included), and whether every mode wrote
the same ``cohort.csv``. Issue 14 asks for ``--workers 2`` to be at least 1.6x ``--workers 1``.

    python benchmarks/batch_throughput.py [--n 30] [--repeat 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def make_one(args: tuple[int, object, str]) -> None:
    from ctbmd.simulate import simulate_phantom, write_phantom

    i, spec, root = args
    write_phantom(simulate_phantom(spec), Path(root) / f"p{i:02d}", dicom=(i % 6 == 5))


def make_cohort(root: Path, n: int) -> Path:
    """Write ``n`` phantoms under ``root`` and ``root/manifest.csv`` (path, kvp); return the manifest."""
    from ctbmd.simulate import cohort_specs

    specs = cohort_specs(n)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(make_one, [(i, s, str(root)) for i, s in enumerate(specs)]))
    lines = ["path,kvp"]
    for i, spec in enumerate(specs):
        d = root / f"p{i:02d}"
        ct = d / "ct" if (d / "ct").is_dir() else d / "ct.nii.gz"
        lines.append(f"{ct.relative_to(root)},{spec.kvp}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def batch(manifest: Path, out: Path, extra: list[str], env: dict | None = None) -> float:
    """Wall seconds of one ``ctbmd batch`` command."""
    cmd = [sys.executable, "-c", "from ctbmd.cli import main; main()", "batch", "--manifest", str(manifest),
           "--out", str(out), "--quiet", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t
    if proc.returncode not in (0, 6):
        raise SystemExit(f"batch failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="phantoms (default 30)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode (median reported)")
    ap.add_argument("--keep", type=Path, help="folder for the phantoms and outputs (default: a temporary one)")
    a = ap.parse_args(argv)
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        manifest = make_cohort(root / "phantoms", a.n)
        print(f"{a.n} phantoms made in {time.perf_counter() - t:.0f} s; {os.cpu_count()} cores")
        times: dict[str, list[float]] = {}
        tables: dict[str, set[str]] = {}
        modes = [("--workers 1", ["--workers", "1"], None), ("--workers 2", ["--workers", "2"], None),
                 ("--workers 1, CTBMD_THREADS=2", ["--workers", "1"], {"CTBMD_THREADS": "2"}),
                 ("--scheduler (LocalCluster, 2 processes)", None, None)]
        for r in range(a.repeat):
            for k, (name, extra, env) in enumerate(modes):
                out = root / f"out_{k}_{r}"
                if extra is None:
                    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      env={"CTBMD_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}) as c:
                        s = batch(manifest, out, ["--scheduler", c.scheduler_address])
                else:
                    s = batch(manifest, out, extra, env)
                times.setdefault(name, []).append(s)
                tables.setdefault(name, set()).add((out / "cohort.csv").read_text())
                done = sum(1 for _ in (out / "scans").iterdir())
                print(f"  run {r + 1} {name}: {s:.1f} s, {done} scans written", flush=True)
        base = statistics.median(times["--workers 1"])
        print(f"\n{'mode':42s} {'seconds':>8s} {'scans/hour':>11s} {'speed-up':>9s}")
        for name, ts in times.items():
            s = statistics.median(ts)
            print(f"{name:42s} {s:8.1f} {a.n / s * 3600:11.0f} {base / s:8.2f}x")
        same = len(set().union(*tables.values())) == 1
        print(f"\nevery mode wrote the same cohort.csv: {same}")
        print(json.dumps({k: [round(x, 1) for x in v] for k, v in times.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
