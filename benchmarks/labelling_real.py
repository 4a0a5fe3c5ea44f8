"""Labelling of the builtin segmenter on real CT and on phantom cohorts.

Usage::

    python benchmarks/labelling_real.py                  # real scans + phantom cohorts
    python benchmarks/labelling_real.py --real-only
    python benchmarks/labelling_real.py --phantoms 100 --variants 10 --workers 2

**Real scans.** Every scan in ``../shared/data`` that has a reference label map
is labelled with the builtin segmenter as ``ctbmd run`` does (measured levels
T11-L5; every named level from T1 to L5 is drawn and judged).
Each named vertebra's centroid is compared with the centroids of the reference
map: it is *right* when the reference vertebra of the same name lies within
10 mm and no other reference vertebra is nearer, *wrong* otherwise. A refusal
(exit code 4) prints its reason. The reference maps are TotalSegmentator
output or expert labels (see ``../shared/data/README.md``).

**Phantoms.** The 100 seeded phantoms of ``benchmarks/accuracy.py``
(:func:`accuracy.draw_cohort`), native and contrast-enhanced separately, and
``--variants`` seeded phantoms of each anatomical variant (chest field of view,
11 and 13 rib pairs, lumbarised S1, sacralised L5, aortic stent, hypoplastic
T12 ribs). A truth level wholly in view (not ``cut_by_edge`` in the phantom's
truth) is named right when a vertebra of that name has its centroid within
10 mm of the truth's label centroid; levels cut by the scan's edge are reported
missing by design and are left out of that count (the chest phantom's L2, cut
at 15-70% of its height); a named vertebra is wrong
when its name's truth centroid is farther than 10 mm (or absent) - the worst
failure. Refused phantoms are counted apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Real scans with a reference: (name, input, reference map, its numbering).
REAL = (
    ("lidc_idri_0001_chest (DICOM)", DATA / "lidc_idri_0001_chest" / "dicom",
     DATA / "lidc_idri_0001_chest" / "segmentation_total.nii.gz", "total"),
    ("ts_example_ct", DATA / "ts_example_ct" / "ct.nii.gz", DATA / "ts_example_ct" / "vertebrae_total.nii.gz", "total"),
    ("ts_example_dicom", DATA / "ts_example_dicom" / "dicom",
     DATA / "ts_example_dicom" / "segmentation_total.nii.gz", "total"),
    ("tptbox_l3_crop", DATA / "tptbox_l3_crop" / "ct.nii.gz", DATA / "tptbox_l3_crop" / "vertebrae_verse.nii.gz",
     "verse"),
)
ALL_LEVELS = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
TOLERANCE_MM = 10.0


def reference_centroids(ct, ref_path: Path, numbering: str) -> dict[str, np.ndarray]:
    """LPS centroid (mm) of every vertebra C1-L6 in a reference label map, resampled onto ``ct``."""
    from ctbmd.io import read_label_map
    from ctbmd.types import VERSE_LABELS

    ref = read_label_map(ref_path, ct)
    if numbering == "total":  # TotalSegmentator v2 total: 26 S1, 27 L5 ... 32 T12 ... 43 T1, 44 C7 ... 50 C1
        names = {27 + i: f"L{5 - i}" for i in range(5)}
        names.update({32 + i: f"T{12 - i}" for i in range(12)})
        names.update({44 + i: f"C{7 - i}" for i in range(7)})
    else:
        names = {v: k for k, v in VERSE_LABELS.items()}
    out = {}
    for value, name in names.items():
        m = ref == value
        if m.sum() >= 50:
            out[name] = ct.index_to_lps(np.array(ndi.center_of_mass(m)))
    return out


def judge(named: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Split named levels into right and wrong (see the module docstring)."""
    right, wrong = [], []
    for name, c in named.items():
        dist = {r: float(np.linalg.norm(c - rc)) for r, rc in refs.items()}
        nearest = min(dist, key=dist.get) if dist else None
        if name in dist and dist[name] <= TOLERANCE_MM and nearest == name:
            right.append(name)
        else:
            where = f"{nearest} at {dist[nearest]:.0f} mm" if nearest else "no reference"
            wrong.append(f"{name} (sits on {where})")
    return right, wrong


def named_centroids(ct, seg) -> dict[str, np.ndarray]:
    """Centroids (LPS mm) of every level drawn in a segmentation's label map."""
    from ctbmd.types import VERSE_NAMES

    out = {}
    for value in np.unique(seg.labels):
        if value and VERSE_NAMES.get(int(value)) in ALL_LEVELS:
            out[VERSE_NAMES[int(value)]] = ct.index_to_lps(np.array(ndi.center_of_mass(seg.labels == value)))
    return out


def real_scans() -> list[dict]:
    """Label every real scan; return one row per scan."""
    from ctbmd.errors import CtbmdError
    from ctbmd.io import read_ct
    from ctbmd.segment import segment

    rows = []
    for name, path, ref_path, numbering in REAL:
        if not path.exists():
            rows.append({"scan": name, "status": "missing", "detail": str(path)})
            continue
        ct = read_ct(path)
        refs = reference_centroids(ct, ref_path, numbering)
        t = time.perf_counter()
        try:
            seg = segment(ct, "builtin")
        except CtbmdError as exc:
            rows.append({"scan": name, "status": f"refused (exit {exc.exit_code})", "seconds": time.perf_counter() - t,
                         "reference": sorted(refs, key=_order), "detail": exc.reason})
            continue
        right, wrong = judge(named_centroids(ct, seg), refs)
        rows.append({"scan": name, "status": "named", "seconds": time.perf_counter() - t,
                     "reference": sorted(refs, key=_order), "right": sorted(right, key=_order), "wrong": wrong,
                     "anchors": seg.anchors, "margin": seg.labelling.margin if seg.labelling else None})
    return rows


def _order(name: str) -> int:
    from ctbmd.types import LEVEL_ORDER

    return LEVEL_ORDER.index(name) if name in LEVEL_ORDER else 99


def print_real(rows: list[dict]) -> None:
    print("== real scans (builtin segmenter; right = same-name reference centroid within 10 mm and nearest) ==")
    for r in rows:
        print(f"\n{r['scan']}: {r['status']}" + (f" in {r['seconds']:.1f} s" if "seconds" in r else ""))
        if "reference" in r:
            ref = r["reference"]
            print(f"  reference levels: {ref[0]}-{ref[-1]} ({len(ref)})" if ref else "  reference levels: none")
        if r["status"] == "named":
            print(f"  named right ({len(r['right'])}): {', '.join(r['right']) or '-'}")
            print(f"  named wrong ({len(r['wrong'])}): {', '.join(r['wrong']) or '-'}")
            print(f"  anchors: {r['anchors']}; margin {r['margin']:.2f}")
        elif "detail" in r:
            print(f"  reason: {r['detail']}")


# --- phantoms -----------------------------------------------------------------------------------

def variant_specs(n: int, seed: int = 7) -> list[tuple[str, dict]]:
    """``n`` seeded phantoms of each anatomical variant (PhantomSpec keyword dicts)."""
    from accuracy import draw_cohort

    base = [s for s in draw_cohort(4 * n, seed) if s["phase"] == "native"]
    out = []
    variants = {
        "chest": {"fov": "chest"},
        "chest, contrast": {"fov": "chest", "phase": "arterial"},
        "11 rib pairs": {"rib_pairs": 11},
        "11 rib pairs (chest)": {"rib_pairs": 11, "fov": "chest"},
        "13 rib pairs": {"rib_pairs": 13},
        "13 rib pairs (chest)": {"rib_pairs": 13, "fov": "chest"},
        "lumbarised S1": {"transition": "lumbarised_s1"},
        "sacralised L5": {"transition": "sacralised_l5"},
        "aortic stent (chest)": {"fov": "chest", "stent": True, "phase": "arterial"},
        "aortic stent (abdomen)": {"stent": True, "phase": "arterial"},
        "hypoplastic T12 ribs": {"t12_rib_length_mm": 25.0},
    }
    for name, extra in variants.items():
        for i in range(n):
            spec = dict(base[i % len(base)])
            spec["seed"] = seed * 100000 + len(out)
            spec.update(extra)
            if spec.get("fov") == "chest":  # the chest phantom ends at L2
                spec["bmd_mg_cm3"] = {"L1": spec["bmd_mg_cm3"]["L1"]}
            out.append((name, spec))
    return out


def run_phantom(args: tuple[str, dict, str]) -> dict:
    """Simulate one phantom and label it; return names against the truth."""
    from ctbmd.errors import CtbmdError
    from ctbmd.io import read_ct
    from ctbmd.segment import segment
    from ctbmd.simulate import PhantomSpec, simulate_phantom, write_phantom

    group, spec_d, work = args
    ph = simulate_phantom(PhantomSpec(**spec_d))
    folder = Path(tempfile.mkdtemp(dir=work))
    write_phantom(ph, folder)
    ct = read_ct(folder / "ct.nii.gz")
    truth = {lv["level"]: np.asarray(lv["label_centroid_lps_mm"]) for lv in ph.truth["levels"]
             if lv.get("label_centroid_lps_mm") is not None}
    # a level cut by the scan's edge is reported missing by design, never guessed: it counts
    # against the labeller only when named wrongly, not when left out
    whole = {lv["level"] for lv in ph.truth["levels"] if not lv.get("cut_by_edge")}
    t = time.perf_counter()
    try:
        seg = segment(ct, "builtin")
        named = named_centroids(ct, seg)
        refusal = None
    except CtbmdError as exc:
        named, refusal = {}, exc.reason
    seconds = time.perf_counter() - t
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    wrong = [n for n, c in named.items() if n not in truth or np.linalg.norm(c - truth[n]) > TOLERANCE_MM]
    right_truth = [n for n, c in truth.items() if n in whole and n in named
                   and np.linalg.norm(named[n] - c) <= TOLERANCE_MM]
    return {"group": group, "seed": spec_d["seed"], "truth_levels": sorted(set(truth) & whole, key=_order),
            "cut_levels": sorted(set(truth) - whole, key=_order),
            "named": sorted(named, key=_order), "wrong": wrong, "right": right_truth, "refusal": refusal,
            "seconds": seconds}


def summarise(records: list[dict], levels: tuple[str, ...]) -> dict:
    """Per-level and per-phantom labelling figures over ``levels`` of the truth."""
    truth_n = sum(sum(1 for lv in r["truth_levels"] if lv in levels) for r in records)
    right_n = sum(sum(1 for lv in r["right"] if lv in levels) for r in records)
    return {"phantoms": len(records), "truth_levels": truth_n, "right_levels": right_n,
            "right_fraction": right_n / truth_n if truth_n else float("nan"),
            "wrong_names": sum(len(r["wrong"]) for r in records),
            "phantoms_with_wrong": sum(bool(r["wrong"]) for r in records),
            "refused": sum(r["refusal"] is not None for r in records)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--phantoms", type=int, default=100, help="phantoms of the accuracy cohort (default 100)")
    ap.add_argument("--variants", type=int, default=10, help="phantoms per anatomical variant (default 10)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/labelling"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = real_scans()
    print_real(rows)
    summary = {"real": rows}
    if not a.real_only:
        from accuracy import draw_cohort

        jobs = [("native" if s["phase"] == "native" else "contrast", s) for s in draw_cohort(a.phantoms)]
        jobs += variant_specs(a.variants)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work, ProcessPoolExecutor(a.workers) as pool:
            records = list(pool.map(run_phantom, [(g, s, work) for g, s in jobs]))
        wall = time.perf_counter() - t0
        print(f"\n== phantoms ({len(records)}, {wall / 60:.1f} min on {a.workers} workers) ==")
        print(f"{'group':24s}{'n':>4s}{'levels right':>16s}{'wrong names':>13s}{'refused':>9s}")
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(r["group"], []).append(r)
        summary["phantoms"] = {}
        for g, recs in groups.items():
            levels = ALL_LEVELS if "chest" in g else ("T11", "T12", "L1", "L2", "L3", "L4", "L5")
            s = summarise(recs, levels)
            summary["phantoms"][g] = s
            print(f"{g:24s}{s['phantoms']:4d}{s['right_levels']:7d}/{s['truth_levels']:<4d}"
                  f"({100 * s['right_fraction']:5.1f}%){s['wrong_names']:8d}{s['refused']:9d}")
        for r in records:
            if r["wrong"] or r["refusal"]:
                print(f"  {r['group']} seed {r['seed']}: "
                      + (f"WRONG {r['wrong']} " if r["wrong"] else "") + (f"refused: {r['refusal']}" if r["refusal"] else ""))
        summary["phantom_records"] = records
    (a.out / "labelling.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nwrote {a.out / 'labelling.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
