"""Accuracy of ``ctbmd run`` (builtin segmenter) on a seeded cohort of known-truth phantoms.

Usage::

    python benchmarks/accuracy.py                 # 100 phantoms, 2 workers, phantomless calibration
    python benchmarks/accuracy.py --n 12 --out out/acc-small
    python benchmarks/accuracy.py --calibration rods      # a rod phantom under every patient
    python benchmarks/accuracy.py --calibration profile   # one scanner profile per kVp (asynchronous)
    python benchmarks/accuracy.py --baseline-src OLD/src  # run another ctbmd checkout on the same phantoms

Each phantom is drawn from a seeded range (``draw_cohort``): L1 BMD 30-250
mg/cm^3 K2HPO4 (other levels within +-10%), kVp 80/100/120/140 in turn, noise
5-30 HU, slices 1/2/3/5 mm, pixels 1.0-1.5 mm, marrow fat 20-70%, body width
250-450 mm, rotation +-8 degrees, and one in four contrast-enhanced (arterial
or portal venous). Tissues are realistic (``tissue_model="realistic"``: fat
composition, muscle with age, blood with haemoglobin drawn from published
ranges, none of them the calibrator's tables). Each kVp stands for one
scanner: its effective energy is the spectrum model's plus a scanner offset
drawn once per kVp from the model's spread (SD ~1.8 keV), shared by the
patients scanned on it. A phantom is written as NIfTI, run through
:func:`ctbmd.api.run` (the code behind ``ctbmd run``) with ``--kvp`` set
to its protocol's kVp (NIfTI has no header for it), and compared with its
truth (QCT-equivalent: what phantom-calibrated QCT Pro reads):

* ``--calibration phantomless`` (default): internal calibration;
* ``--calibration rods``: a Mindways-style rod phantom lies under every
  patient (:func:`ctbmd.simulate.rods.add_rod_phantom`) and ``--rods`` is given;
* ``--calibration profile``: per kVp, one 32 cm rod-phantom scan on that
  scanner makes a profile (``ctbmd calibrate-scanner``), used for its patients;
* ``--baseline-src DIR``: the same phantoms run through another ctbmd source
  tree (e.g. a checkout before a change) with its own defaults, for a
  before/after comparison.


* labelling: a truth level T11-L5 is correct when ctbmd reports it under the
  same name with its centroid within 10 mm of the truth centroid;
* BMD: per level and per patient (the levels ctbmd used), against the
  QCT-equivalent truth (what ideal phantom-calibrated QCT reads) and against
  the K2HPO4 set in the marrow (the difference is the marrow-fat effect);
* ACR category (120/80 mg/cm^3) agreement at patient level.

It prints the tables, writes ``levels.csv``, ``patients.csv``,
``summary.json`` and PNG plots into ``--out``. Pearson r comes from
scipy.stats; MAE, RMSE, bias and the Bland-Altman limits (bias +- 1.96 SD)
are computed with numpy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import stats

REPORTED = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")


#: SD (keV) of the scanner offsets from the spectrum model (ctbmd.calibrate.energy: hypot(~1.0, 1.5)).
SCANNER_OFFSET_SD_KEV = 1.8


def scanner_offsets(seed: int) -> dict[int, float]:
    """One effective-energy offset (keV) per kVp: each kVp is one scanner of the cohort."""
    rng = np.random.default_rng([seed, 5])
    return {kvp: round(float(np.clip(rng.normal(0.0, SCANNER_OFFSET_SD_KEV), -4, 4)), 2) for kvp in (80, 100, 120, 140)}


def draw_cohort(n: int, seed: int = 2026) -> list[dict]:
    """Seeded phantom settings (dicts of :class:`ctbmd.simulate.PhantomSpec` fields)."""
    rng = np.random.default_rng(seed)
    offsets = scanner_offsets(seed)
    specs = []
    for i in range(n):
        l1 = float(rng.uniform(30.0, 250.0))
        bmd = {lv: round(l1 * float(rng.uniform(0.9, 1.1)), 1) if lv != "L1" else round(l1, 1)
               for lv in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")}
        phase = "native"
        if i % 4 == 3:
            phase = "arterial" if (i // 4) % 2 else "portal_venous"
        specs.append(dict(
            bmd_mg_cm3=bmd, kvp=(80, 100, 120, 140)[i % 4], noise_hu=round(float(rng.uniform(5, 30)), 1),
            slice_thickness_mm=float(rng.choice([1.0, 2.0, 3.0, 5.0])),
            pixel_mm=round(float(rng.uniform(1.0, 1.5)), 2), psf_fwhm_mm=round(float(rng.uniform(0.8, 1.4)), 2),
            marrow_fat_fraction=round(float(rng.uniform(0.2, 0.7)), 3),
            body_width_mm=round(float(rng.uniform(250, 450)), 1), phase=phase,
            rotation_deg=round(float(rng.uniform(-8, 8)), 1), tissue_spread=float(rng.choice([0.0, 0.005])),
            tissue_model="realistic", energy_offset_kev=offsets[(80, 100, 120, 140)[i % 4]],
            seed=int(seed * 1000 + i)))
    return specs


def make_profiles(work: Path, seed: int) -> dict[int, str]:
    """Per kVp, scan a rod phantom under a 320 mm wide patient on that scanner and save its profile."""
    from ctbmd.calibrate.rods import make_profile, save_profile
    from ctbmd.io import read_ct
    from ctbmd.simulate import PhantomSpec, simulate_phantom, write_phantom
    from ctbmd.simulate.rods import add_rod_phantom

    offsets = scanner_offsets(seed)
    out = {}
    for kvp in (80, 100, 120, 140):
        ph = add_rod_phantom(simulate_phantom(PhantomSpec(bmd_mg_cm3={"L1": 150.0}, kvp=kvp, noise_hu=10.0,
                                                          slice_thickness_mm=2.0, pixel_mm=1.0, body_width_mm=320.0,
                                                          energy_offset_kev=offsets[kvp], seed=seed + kvp)))
        folder = work / f"scanner_{kvp}"
        write_phantom(ph, folder)
        ct = read_ct(folder / "ct.nii.gz")
        profile = make_profile(ct, _default_rods(), model=f"phantom scanner {kvp} kV", kvp=float(kvp))
        out[kvp] = str(save_profile(profile, work / f"profile_{kvp}.json"))
    return out


def _default_rods():
    from ctbmd.calibrate.rods import DEFAULT_ROD_SPEC

    return DEFAULT_ROD_SPEC


def run_one(args: tuple[int, dict, str, str, dict, str | None]) -> dict:
    """Simulate phantom ``i`` and run ctbmd on it; return truth, result and timings (or the error)."""
    from ctbmd.errors import CtbmdError
    from ctbmd.api import run
    from ctbmd.simulate import PhantomSpec, simulate_phantom, write_phantom

    i, spec_d, work, mode, profiles, baseline_src = args
    spec = PhantomSpec(**spec_d)
    t0 = time.perf_counter()
    ph = simulate_phantom(spec)
    options: dict = {"kvp": float(spec.kvp)}
    if mode == "rods":
        from ctbmd.simulate.rods import add_rod_phantom

        ph = add_rod_phantom(ph)
        options["rods"] = ",".join(f"{r.k2hpo4_mg_cm3:g}" for r in _default_rods().rods)
    elif mode == "profile":
        options["scanner_profile"] = profiles[spec.kvp]
    folder = Path(work) / f"p{i:03d}"
    write_phantom(ph, folder)
    t1 = time.perf_counter()
    if baseline_src:
        result, error = _run_baseline(baseline_src, folder)
    else:
        try:
            result = run(folder / "ct.nii.gz", folder / "out", **options).to_dict()
            error = None
        except CtbmdError as exc:
            result, error = None, exc.one_line()
    t2 = time.perf_counter()
    return {"i": i, "spec": asdict(spec), "truth": ph.truth, "result": result, "error": error,
            "simulate_s": t1 - t0, "run_s": t2 - t1, "shape": list(ph.hu.shape)}


def _run_baseline(src: str, folder: Path) -> tuple[dict | None, str | None]:
    """``ctbmd run`` of another source tree (its own defaults) on one phantom."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", "from ctbmd.cli import main; main()", "run",
                           str(folder / "ct.nii.gz"), "--out", str(folder / "out"), "--quiet"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads((folder / "out" / "result.json").read_text()), None


def level_rows(rec: dict) -> list[dict]:
    """One row per truth level T11-L5: labelling and BMD against the truth."""
    truth = {lv["level"]: lv for lv in rec["truth"]["levels"]}
    pred = {lv["level"]: lv for lv in (rec["result"] or {}).get("levels", [])}
    s = rec["spec"]
    rows = []
    for name in REPORTED:
        t = truth.get(name)
        if t is None or t["label_centroid_lps_mm"] is None:
            continue
        p = pred.get(name)
        dist = None
        if p is not None and p.get("centroid_lps_mm") is not None:
            dist = float(np.linalg.norm(np.subtract(p["centroid_lps_mm"], t["label_centroid_lps_mm"])))
        rows.append({
            "phantom": rec["i"], "level": name, "kvp": s["kvp"], "noise_hu": s["noise_hu"],
            "slice_mm": s["slice_thickness_mm"], "marrow_fat": s["marrow_fat_fraction"],
            "body_width_mm": s["body_width_mm"], "phase": s["phase"], "tissue_spread": s["tissue_spread"],
            "found": p is not None, "centroid_error_mm": dist,
            "labelled_correctly": bool(p is not None and dist is not None and dist <= 10.0),
            "flags": ";".join(p["flags"]) if p else "",
            "truth_qct_mg_cm3": t["qct_equivalent_mg_cm3"], "truth_k2hpo4_mg_cm3": t["bmd_mg_cm3"],
            "truth_hu": t["trabecular_hu"],
            "hu": p["trabecular_hu_median"] if p else None, "bmd_mg_cm3": p["bmd_mg_cm3"] if p else None,
        })
    return rows


def patient_row(rec: dict) -> dict | None:
    """Patient-level BMD against the truth over the levels ctbmd used."""
    from ctbmd.classify import acr_category

    res = rec["result"]
    if not res or res["patient"]["bmd_mg_cm3"] is None:
        return None
    used = res["patient"]["levels_used"]
    truth = {lv["level"]: lv for lv in rec["truth"]["levels"]}
    if any(u not in truth for u in used):
        return None
    qct = float(np.mean([truth[u]["qct_equivalent_mg_cm3"] for u in used]))
    k2 = float(np.mean([truth[u]["bmd_mg_cm3"] for u in used]))
    s = rec["spec"]
    return {"phantom": rec["i"], "levels_used": "+".join(used), "kvp": s["kvp"], "noise_hu": s["noise_hu"],
            "slice_mm": s["slice_thickness_mm"], "marrow_fat": s["marrow_fat_fraction"],
            "body_width_mm": s["body_width_mm"], "phase": s["phase"], "tissue_spread": s["tissue_spread"],
            "truth_qct_mg_cm3": qct, "truth_k2hpo4_mg_cm3": k2, "bmd_mg_cm3": res["patient"]["bmd_mg_cm3"],
            "category": res["patient"]["category"], "truth_category": acr_category(qct),
            "truth_category_k2hpo4": acr_category(k2),
            "truth_energy_kev": rec["truth"]["scan"]["effective_energy_kev"],
            "fitted_energy_kev": res["calibration"]["effective_energy_kev"],
            "ci95_low": (res["patient"].get("bmd_ci95_mg_cm3") or [None, None])[0],
            "ci95_high": (res["patient"].get("bmd_ci95_mg_cm3") or [None, None])[1],
            "detected_phase": res["input"]["contrast_phase"]}


def agreement(pred, ref) -> dict:
    """n, MAE, RMSE, bias, SD, Bland-Altman limits, Pearson r and r^2 of pred against ref."""
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    ok = np.isfinite(pred) & np.isfinite(ref)
    pred, ref = pred[ok], ref[ok]
    if len(pred) < 3:
        return {"n": int(len(pred))}
    d = pred - ref
    r = stats.pearsonr(pred, ref).statistic
    return {"n": int(len(d)), "mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d * d))),
            "bias": float(d.mean()), "sd": float(d.std(ddof=1)),
            "loa_low": float(d.mean() - 1.96 * d.std(ddof=1)), "loa_high": float(d.mean() + 1.96 * d.std(ddof=1)),
            "r": float(r), "r2": float(r * r)}


def fmt(a: dict) -> str:
    if a.get("n", 0) < 3:
        return f"n={a.get('n', 0)} (too few)"
    return (f"n={a['n']:4d}  MAE {a['mae']:6.2f}  RMSE {a['rmse']:6.2f}  bias {a['bias']:+6.2f}  "
            f"LoA [{a['loa_low']:+7.2f}, {a['loa_high']:+7.2f}]  r {a['r']:.4f}  r² {a['r2']:.4f}")


def breakdown(rows: list[dict], key: str, bins=None) -> list[tuple[str, dict]]:
    out = []
    if bins is None:
        for v in sorted({r[key] for r in rows}, key=str):
            sel = [r for r in rows if r[key] == v]
            out.append((str(v), agreement([r["bmd_mg_cm3"] for r in sel], [r["truth_qct_mg_cm3"] for r in sel])))
    else:
        for lo, hi in zip(bins[:-1], bins[1:]):
            sel = [r for r in rows if lo <= r[key] < hi]
            out.append((f"{lo}-{hi}", agreement([r["bmd_mg_cm3"] for r in sel],
                                                [r["truth_qct_mg_cm3"] for r in sel])))
    return out


def plots(levels: list[dict], patients: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    native = [p for p in patients if p["phase"] == "native"]
    enhanced = [p for p in patients if p["phase"] != "native"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 5.5))
    for sel, colour, name in ((native, "tab:blue", "native"), (enhanced, "tab:red", "contrast")):
        x = np.array([p["truth_qct_mg_cm3"] for p in sel])
        y = np.array([p["bmd_mg_cm3"] for p in sel])
        ax[0].scatter(x, y, s=14, c=colour, label=f"{name} (n={len(sel)})")
        m, d = (x + y) / 2, y - x
        ax[1].scatter(m, d, s=14, c=colour, label=name)
    lim = [min(-30, min((p["truth_qct_mg_cm3"] for p in patients), default=0)) - 5, 280]
    ax[0].plot(lim, lim, "k--", lw=1, label="identity")
    for t in (80, 120):
        ax[0].axhline(t, c="grey", lw=0.5)
        ax[0].axvline(t, c="grey", lw=0.5)
    ax[0].set(xlabel="truth, QCT-equivalent (mg/cm³ K2HPO4)", ylabel="ctbmd (mg/cm³)",
              title="Patient BMD (levels ctbmd used)", xlim=lim, ylim=lim)
    ax[0].legend()
    a = agreement([p["bmd_mg_cm3"] for p in native], [p["truth_qct_mg_cm3"] for p in native])
    if a.get("n", 0) >= 3:
        for v, ls in ((a["bias"], "-"), (a["loa_low"], "--"), (a["loa_high"], "--")):
            ax[1].axhline(v, c="tab:blue", ls=ls, lw=1)
    ax[1].set(xlabel="mean of ctbmd and truth (mg/cm³)", ylabel="ctbmd − truth (mg/cm³)",
              title="Bland–Altman, patient level (lines: native bias and 95% limits)")
    ax[1].legend()
    fig.tight_layout()
    files.append(out / "patient_scatter_bland_altman.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    nat = [r for r in levels if r["phase"] == "native" and r["bmd_mg_cm3"] is not None]
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.5))
    for k, (key, label) in enumerate((("kvp", "kVp"), ("noise_hu", "noise SD (HU)"),
                                      ("marrow_fat", "marrow fat fraction"), ("body_width_mm", "body width (mm)"))):
        x = np.array([r[key] for r in nat], float)
        d = np.array([r["bmd_mg_cm3"] - r["truth_qct_mg_cm3"] for r in nat])
        ax[k].scatter(x, d, s=6, alpha=0.6)
        ax[k].axhline(0, c="k", lw=0.8)
        ax[k].set(xlabel=label, ylabel="level error (mg/cm³)" if k == 0 else None)
    fig.suptitle("Per-level error against the QCT-equivalent truth, native phase")
    fig.tight_layout()
    files.append(out / "level_error_by_factor.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="number of phantoms (default 100)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/accuracy"))
    ap.add_argument("--keep", action="store_true", help="keep the phantoms and ctbmd outputs")
    ap.add_argument("--calibration", choices=("phantomless", "rods", "profile"), default="phantomless")
    ap.add_argument("--baseline-src", default=None, help="run this ctbmd source tree instead (before/after)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    specs = draw_cohort(a.n, a.seed)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ctbmd-acc-", dir=a.out if a.keep else None))
    records = []
    profiles = make_profiles(work, a.seed) if a.calibration == "profile" else {}
    jobs = [(i, s, str(work), a.calibration, profiles, a.baseline_src) for i, s in enumerate(specs)]
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        for rec in pool.map(run_one, jobs):
            records.append(rec)
            status = rec["error"] or f"patient {(rec['result'] or {}).get('patient', {}).get('bmd_mg_cm3')}"
            print(f"[{len(records):3d}/{a.n}] phantom {rec['i']:3d} {rec['spec']['kvp']} kVp "
                  f"{rec['spec']['phase']:13s} sim {rec['simulate_s']:4.1f}s run {rec['run_s']:5.1f}s  {status}",
                  flush=True)
    wall = time.perf_counter() - t0
    if not a.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)

    levels = [r for rec in records for r in level_rows(rec)]
    patients = [p for p in (patient_row(rec) for rec in records) if p]
    failures = [(rec["i"], rec["error"]) for rec in records if rec["error"]]
    for name, rows in (("levels.csv", levels), ("patients.csv", patients)):
        if rows:
            with open(a.out / name, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)

    summary: dict = {"n_phantoms": a.n, "wall_s": wall, "failures": failures, "calibration": a.calibration,
                     "baseline_src": a.baseline_src, "scanner_offsets_kev": scanner_offsets(a.seed)}
    print(f"\nctbmd accuracy on {a.n} phantoms (seed {a.seed}), calibration {a.calibration}"
          f"{', baseline ' + a.baseline_src if a.baseline_src else ''}, wall {wall / 60:.1f} min; "
          f"failed runs: {len(failures)}")
    for i, e in failures:
        print(f"  phantom {i}: {e}")
    for phase_name, phase_sel in (("native", lambda r: r["phase"] == "native"),
                                  ("contrast-enhanced", lambda r: r["phase"] != "native")):
        lv = [r for r in levels if phase_sel(r)]
        pt = [p for p in patients if phase_sel(p)]
        n_runs = len({r["phantom"] for r in lv})
        lab = float(np.mean([r["labelled_correctly"] for r in lv])) if lv else float("nan")
        pat_lab = float(np.mean([all(r["labelled_correctly"] for r in lv if r["phantom"] == k)
                                 for k in {r["phantom"] for r in lv}])) if lv else float("nan")
        measured = [r for r in lv if r["bmd_mg_cm3"] is not None and r["labelled_correctly"]]
        a_lv = agreement([r["bmd_mg_cm3"] for r in measured], [r["truth_qct_mg_cm3"] for r in measured])
        a_lv_k = agreement([r["bmd_mg_cm3"] for r in measured], [r["truth_k2hpo4_mg_cm3"] for r in measured])
        a_pt = agreement([p["bmd_mg_cm3"] for p in pt], [p["truth_qct_mg_cm3"] for p in pt])
        a_pt_k = agreement([p["bmd_mg_cm3"] for p in pt], [p["truth_k2hpo4_mg_cm3"] for p in pt])
        cat = float(np.mean([p["category"] == p["truth_category"] for p in pt])) if pt else float("nan")
        cat_k = float(np.mean([p["category"] == p["truth_category_k2hpo4"] for p in pt])) if pt else float("nan")
        hu = agreement([r["hu"] for r in measured], [r["truth_hu"] for r in measured])
        print(f"\n== {phase_name}: {n_runs} phantoms, {len(lv)} truth levels T11-L5 ==")
        print(f"labelling accuracy: per level {lab:.4f}, per phantom (all levels right) {pat_lab:.4f}")
        print(f"levels not reported: {sum(not r['found'] for r in lv)}; "
              f"flagged: {sum(bool(r['flags']) for r in lv)}")
        print(f"trabecular HU vs noise-free truth HU (level): {fmt(hu)}")
        print(f"level   BMD vs QCT-equivalent truth:  {fmt(a_lv)}")
        print(f"patient BMD vs QCT-equivalent truth:  {fmt(a_pt)}")
        print(f"level   BMD vs K2HPO4 set in marrow:  {fmt(a_lv_k)}")
        print(f"patient BMD vs K2HPO4 set in marrow:  {fmt(a_pt_k)}")
        print(f"ACR category accuracy (patient): vs QCT-equivalent {cat:.3f}, vs K2HPO4 set {cat_k:.3f}")
        with_ci = [p for p in pt if p.get("ci95_low") is not None]
        coverage = (float(np.mean([p["ci95_low"] <= p["truth_qct_mg_cm3"] <= p["ci95_high"] for p in with_ci]))
                    if with_ci else float("nan"))
        print(f"95% interval covers the truth: {coverage:.3f} of {len(with_ci)} patients; mean width "
              f"{np.mean([p['ci95_high'] - p['ci95_low'] for p in with_ci]) if with_ci else float('nan'):.1f} mg/cm³")
        summary[phase_name] = {"labelling_level": lab, "labelling_phantom": pat_lab, "hu_level": hu,
                               "level_qct": a_lv, "patient_qct": a_pt, "level_k2hpo4": a_lv_k,
                               "patient_k2hpo4": a_pt_k, "category_accuracy_qct": cat,
                               "category_accuracy_k2hpo4": cat_k, "ci95_coverage": coverage}
        if phase_name == "native" and pt:
            print("\npatient error (vs QCT-equivalent) by factor, native phase:")
            for key, bins in (("kvp", None), ("noise_hu", [5, 12, 20, 31]), ("slice_mm", None),
                              ("marrow_fat", [0.2, 0.35, 0.5, 0.71]), ("body_width_mm", [250, 320, 390, 451]),
                              ("tissue_spread", None)):
                for label, ag in breakdown(pt, key, bins):
                    print(f"  {key:14s} {label:12s} {fmt(ag)}")
            d_e = [p["fitted_energy_kev"] - p["truth_energy_kev"] for p in pt if p["fitted_energy_kev"]]
            print(f"  fitted minus true effective energy: mean {np.mean(d_e):+.2f} keV, SD {np.std(d_e):.2f} keV")
            print("patient error (vs K2HPO4 set) by marrow fat, native phase:")
            for lo, hi in zip([0.2, 0.35, 0.5], [0.35, 0.5, 0.71]):
                sel = [p for p in pt if lo <= p["marrow_fat"] < hi]
                print(f"  marrow_fat     {lo}-{hi}    "
                      + fmt(agreement([p["bmd_mg_cm3"] for p in sel], [p["truth_k2hpo4_mg_cm3"] for p in sel])))
        if phase_name != "native" and pt:
            print("by phase:")
            for label, ag in breakdown(pt, "phase"):
                print(f"  {label:14s} {fmt(ag)}")
    sim = [r["simulate_s"] for r in records]
    run_s = [r["run_s"] for r in records]
    print(f"\ntime per phantom: simulate {np.mean(sim):.1f} s, ctbmd run {np.mean(run_s):.1f} s (mean, "
          f"{a.workers} workers)")
    files = plots(levels, patients, a.out) if patients else []
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("wrote", ", ".join(str(p) for p in [a.out / "levels.csv", a.out / "patients.csv",
                                              a.out / "summary.json", *files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
