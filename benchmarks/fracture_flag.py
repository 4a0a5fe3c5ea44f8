"""Fracture flag on digital phantoms: how often a set height loss is flagged, and an intact spine is not.

Each case ``i`` draws from ``np.random.default_rng([seed, i])``: a slice thickness of 1, 2 or 3 mm,
a pixel of 1.5 or 2 mm, 8-20 HU of noise, an L1 BMD of 60-180 mg/cm³ K2HPO4 and one level of
T11-L4; its anatomy seed is ``seed * 1000 + i``. The case is made twice, with the same anatomy:
once with a fracture of that level (``--kind``, ``--loss``; default a 30% anterior wedge) and once
intact. Both go through :func:`ctbmd.api.analyse` (the builtin labeller unless ``--segmenter
labels``, which reads the phantom's own label map), and the ``suspected_fracture`` flags of
T11-L4 are counted:

* fractured: the fractured level flagged (and any other level flagged, a false positive);
* intact: any of T11-L4 flagged (per phantom and per vertebra).

Usage::

    python benchmarks/fracture_flag.py --n 20            # 20 fractured + 20 intact, builtin labeller
    python benchmarks/fracture_flag.py --n 10 --kind crush --loss 0.3
    python benchmarks/fracture_flag.py --n 10 --segmenter labels   # the phantom's true labels

Prints one line per phantom and the counts, overall and per slice thickness.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4")


def draw_case(seed: int, i: int) -> dict:
    """The settings of case ``i`` (see the module docstring)."""
    rng = np.random.default_rng([seed, i])
    return {"slice_mm": float(rng.choice([1.0, 2.0, 3.0])), "pixel_mm": float(rng.choice([1.5, 2.0])),
            "noise_hu": round(float(rng.uniform(8.0, 20.0)), 1), "bmd": round(float(rng.uniform(60.0, 180.0)), 1),
            "level": str(rng.choice(LEVELS)), "anatomy_seed": seed * 1000 + i}


def run_case(case: dict, fracture: tuple[str, float] | None, segmenter: str) -> dict:
    """Simulate one phantom, analyse it and return the flagged levels and the fractured level's grade."""
    import ctbmd
    from ctbmd.errors import CtbmdError
    from ctbmd.io import array_to_image
    from ctbmd.simulate import PhantomSpec, simulate_phantom
    from ctbmd.types import CTVolume, ScanInfo

    spec = PhantomSpec(pixel_mm=case["pixel_mm"], slice_thickness_mm=case["slice_mm"], noise_hu=case["noise_hu"],
                       bmd_mg_cm3={"L1": case["bmd"]}, seed=case["anatomy_seed"],
                       fractures={case["level"]: fracture} if fracture else {})
    ph = simulate_phantom(spec)
    ct = CTVolume(hu=ph.hu.astype(np.float32), grid=ph.grid,
                  info=ScanInfo(path="phantom", format="nifti", input_grid=ph.grid,
                                slice_thickness_mm=case["slice_mm"], kvp=float(spec.kvp)))
    options = {}
    if segmenter == "labels":
        import SimpleITK as sitk

        folder = tempfile.mkdtemp(prefix="ctbmd-fracture-")
        path = Path(folder) / "labels.nii.gz"
        sitk.WriteImage(array_to_image(ph.labels, ph.grid), str(path))
        options = {"labels": path, "label_map": "verse"}
    try:
        res = ctbmd.analyse(ct, **options)
    except CtbmdError as exc:  # the labeller refused to name the levels: nothing measured, nothing flagged
        return {"flagged": [], "grade": None, "kind": None, "ratios": {}, "measured": [], "refused": exc.one_line()}
    by = {m.level: m for m in res.levels}
    flagged = [m.level for m in res.levels if m.level in LEVELS and "suspected_fracture" in m.flags]
    m = by.get(case["level"])
    return {"flagged": flagged, "grade": None if m is None else m.genant_grade,
            "kind": None if m is None else m.deformity,
            "ratios": {} if m is None else m.height_ratios, "measured": [lv for lv in LEVELS if lv in by],
            "refused": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="fractured phantoms (and as many intact ones)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--kind", default="wedge", choices=("wedge", "biconcave", "crush"))
    ap.add_argument("--loss", type=float, default=0.30, help="height loss of the fracture (fraction)")
    ap.add_argument("--segmenter", default="builtin", choices=("builtin", "labels"))
    args = ap.parse_args(argv)
    hits, fp_other, fp_intact_ph, fp_intact_lv, n_intact_lv, refused = 0, 0, 0, 0, 0, 0
    by_slice: dict[float, list[int]] = {}
    t0 = time.time()
    for i in range(args.n):
        case = draw_case(args.seed, i)
        frac = run_case(case, (args.kind, args.loss), args.segmenter)
        intact = run_case(case, None, args.segmenter)
        refused += bool(frac["refused"]) + bool(intact["refused"])
        hit = case["level"] in frac["flagged"]
        others = [lv for lv in frac["flagged"] if lv != case["level"]]
        hits += hit
        fp_other += len(others)
        fp_intact_ph += bool(intact["flagged"])
        fp_intact_lv += len(intact["flagged"])
        n_intact_lv += len(intact["measured"])
        row = by_slice.setdefault(case["slice_mm"], [0, 0, 0])
        row[0] += 1
        row[1] += hit
        row[2] += bool(intact["flagged"])
        ratio = frac["ratios"].get("anterior_posterior" if args.kind == "wedge" else
                                   "middle_posterior" if args.kind == "biconcave" else "mean_neighbours")
        print(f"{i:3d} {case['level']:3s} slice {case['slice_mm']:.0f} mm pixel {case['pixel_mm']} mm "
              f"noise {case['noise_hu']:4.1f} HU  fractured: grade {frac['grade']} {frac['kind'] or '-':9s} "
              f"ratio {ratio}  {'FLAGGED' if hit else 'missed '}  other flags {others or '-'}  "
              f"intact: flags {intact['flagged'] or '-'}"
              + "".join(f"  [{name} refused: {r['refused']}]" for name, r in (("fractured", frac), ("intact", intact))
                        if r["refused"]), flush=True)
    n = args.n
    print(f"\n{args.kind} {args.loss:.0%}, {args.segmenter} segmenter, seed {args.seed}, {time.time() - t0:.0f} s")
    print(f"fractured level flagged: {hits}/{n} ({hits / n:.0%}); other levels of fractured phantoms flagged: {fp_other}")
    print(f"intact phantoms with any flag (T11-L4): {fp_intact_ph}/{n} ({fp_intact_ph / n:.0%}); "
          f"intact vertebrae flagged: {fp_intact_lv}/{n_intact_lv}")
    print(f"phantoms the labeller refused to name (counted as not flagged): {refused}/{2 * n}")
    for s in sorted(by_slice):
        cases, h, f = by_slice[s]
        print(f"  slice {s:.0f} mm: fractured flagged {h}/{cases}, intact phantoms flagged {f}/{cases}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
