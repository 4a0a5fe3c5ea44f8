"""Phantomless calibration on every real scan in ``../shared/data``: kVp, Dw, tissues, energy, slope, L1+L2.

Usage::

    python benchmarks/real_calibration.py            # prints the table, writes out/real_calibration.json

For each real CT it runs :func:`ctbmd.pipeline.analyse` (the builtin labeller;
where it refuses or the scan has no anchor in view, the scan's own reference
label map, as ``ctbmd run --labels`` would) and prints:

* the kVp and where it came from (DICOM header, or assumed 120 kV);
* the water-equivalent diameter Dw (AAPM Report 220) at the measured levels;
* the reference-tissue medians (air, subcutaneous fat, paraspinal muscle, aortic blood);
* the effective energy E +- its posterior SD, and the prior it started from;
* the K2HPO4 slope sigma_CT (HU per mg/cm^3, QCT Pro convention) and its 95% interval;
* L1+L2 BMD (mg/cm^3, from the ROI mean HU) with its 95% interval, or the levels used instead.

A slope outside the published QCT Pro band for the kVp (``BACKGROUND.md``: 80 kVp 1.73-1.96,
100 kVp 1.44-1.64, 120 kVp 1.27-1.45, 140 kVp 1.15-1.33 HU per mg/cm^3, 20-35 cm patients) is
flagged ``OUT OF BAND``. No real scan here has a BMD reference; the shared example's expected
L1+L2 (85-107 mg/cm^3, from three independent conversions of its HU) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Published QCT Pro K2HPO4 slopes (HU per mg/cm^3) by kVp (BACKGROUND.md, 20-35 cm patients).
SLOPE_BAND = {80: (1.73, 1.96), 100: (1.44, 1.64), 120: (1.27, 1.45), 140: (1.15, 1.33)}
#: name, input, options for analyse (labels where the builtin labeller has no anchor), expectation.
SCANS = (
    ("ts_example_ct", "ts_example_ct/ct.nii.gz", {}, "L1+L2 85-107 mg/cm3 expected (BACKGROUND.md)"),
    ("lidc_idri_0001_chest", "lidc_idri_0001_chest/dicom", {"levels": ("T11", "T12", "L1", "L2")},
     "120 kVp, contrast: E 64-74 keV, slope 1.27-1.45"),
    ("ts_example_dicom", "ts_example_dicom/dicom",
     {"labels": "ts_example_dicom/segmentation_total.nii.gz", "segmenter": "labels", "label_map": "total"},
     "20 slices, T11/T12 only, contrast"),
    ("tptbox_l3_crop", "tptbox_l3_crop/ct.nii.gz",
     {"labels": "tptbox_l3_crop/vertebrae_verse.nii.gz", "segmenter": "labels", "label_map": "verse"},
     "73x47x73 crop: little body outline"),
)


def measure(name: str, rel: str, options: dict) -> dict:
    """Analyse one scan; return the calibration figures (or the error)."""
    from ctbmd.errors import CtbmdError
    from ctbmd.pipeline import analyse

    opts = {k: (str(DATA / v) if k == "labels" else v) for k, v in options.items()}
    try:
        res = analyse(DATA / rel, **opts)
    except CtbmdError as exc:
        return {"scan": name, "error": exc.one_line()}
    cal, p = res.calibration, res.patient
    t = {k: v.hu_median for k, v in cal.tissues.items()}
    band = SLOPE_BAND.get(int(round(cal.kvp))) if cal.kvp else None
    return {"scan": name, "kvp": cal.kvp, "kvp_source": cal.kvp_source, "dw_cm": cal.dw_cm, "tissues_hu": t,
            "phase": res.phase.phase, "ok": cal.ok, "reason": cal.reason,
            "energy_kev": cal.effective_energy_kev, "energy_sd_kev": cal.energy_sd_kev,
            "prior": cal.details.get("energy_prior_kev"), "sigma_ct": cal.sigma_ct,
            "sigma_ct_95": cal.sigma_ct_95, "slope_band": band,
            "slope_in_band": None if band is None or cal.sigma_ct is None else band[0] <= cal.sigma_ct <= band[1],
            "levels_used": list(p.levels_used), "bmd_mg_cm3": p.bmd_mg_cm3, "bmd_ci95_mg_cm3": p.bmd_ci95_mg_cm3,
            "category": p.category, "category_certain": p.category_certain, "qc_flags": list(cal.qc_flags)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/real_calibration.json"))
    a = ap.parse_args(argv)
    rows = []
    for name, rel, options, expect in SCANS:
        if not (DATA / rel).exists():
            print(f"{name}: missing ({DATA / rel})")
            continue
        r = measure(name, rel, options)
        r["expectation"] = expect
        rows.append(r)
    head = (f"{'scan':22s} {'kVp':>9s} {'Dw cm':>6s} {'air':>6s} {'fat':>5s} {'muscle':>6s} {'blood':>6s} "
            f"{'E keV (prior)':>20s} {'slope HU/(mg/cm3) [95%]':>26s} {'patient mg/cm3 [95%]':>28s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['scan']:22s} error: {r['error']}")
            continue
        t = r["tissues_hu"]
        kvp = f"{r['kvp']:.0f}{'*' if r['kvp_source'] == 'assumed' else ''}" if r["kvp"] else "-"
        e = "-" if r["energy_kev"] is None else f"{r['energy_kev']:.1f}±{r['energy_sd_kev']:.1f} ({r['prior']['mean']:.1f})"
        s = "-" if r["sigma_ct"] is None else (f"{r['sigma_ct']:.3f} [{r['sigma_ct_95'][0]:.2f}-{r['sigma_ct_95'][1]:.2f}]"
                                               + ("" if r["slope_in_band"] in (True, None) else " OUT OF BAND"))
        pt = "-" if r["bmd_mg_cm3"] is None else (f"{'+'.join(r['levels_used'])} {r['bmd_mg_cm3']:.1f} "
                                                  f"[{r['bmd_ci95_mg_cm3'][0]:.0f}-{r['bmd_ci95_mg_cm3'][1]:.0f}]"
                                                  f" {r['category']}{'' if r['category_certain'] else '?'}")
        fmt = lambda k: f"{t[k]:.0f}" if k in t else "-"  # noqa: E731
        print(f"{r['scan']:22s} {kvp:>9s} {r['dw_cm'] or float('nan'):6.1f} {fmt('air'):>6s} {fmt('subcutaneous_fat'):>5s} "
              f"{fmt('paraspinal_muscle'):>6s} {fmt('aortic_blood'):>6s} {e:>20s} {s:>26s} {pt:>28s}")
        print(f"{'':22s} {r['phase']}; {r['expectation']}" + (f"; not calibrated: {r['reason']}" if not r["ok"] else "")
              + "".join(f"\n{'':22s} QC: {q}" for q in r["qc_flags"]))
    print("* kVp assumed (none in the header); ? = the 95% interval spans an ACR threshold")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=1, default=str))
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
