"""The seed studies' protocols on one simulated multi-site cohort, in the papers' table format.

Usage::

    python benchmarks/seed_protocols.py                    # 4 x 15 internal + 20 external patients, CPU
    python benchmarks/seed_protocols.py --per-site 6 --external 6 --epochs-3d 2 --epochs-2d 2 --out out/sp-small
    python benchmarks/seed_protocols.py --full             # the papers' networks (DenseNet-121, ResNet-50), for a GPU

Steps:

1. **Cohort** (:data:`SITES`): four internal sites and one external site, each a
   scanner with its own tube voltage, effective-energy offset, noise, kernel
   sharpness (point-spread FWHM), slice thickness and use of contrast (none,
   arterial or portal venous). Per patient, L1 BMD is drawn from 30-250 mg/cm³
   K2HPO4 (the other levels within +-10%), and marrow fat, body width and
   rotation vary as in ``benchmarks/dl_cohort.py``. The external site (other
   scanner, sharp kernel, half of its patients contrast-enhanced) is the
   manifest's ``external`` split, never trained or early-stopped on. Each
   phantom is written with ``ctbmd simulate``'s code and its crops are cached
   once for all protocols; the manifest gives the phantoms' own label maps (as a
   hospital gives TotalSegmentator labels), the tube voltage (``kvp``: a NIfTI
   carries none, a DICOM series does) and the QCT-equivalent truth of T11-L5.
2. **Protocols** (:data:`RUNS`, :mod:`ctbmd.model.protocols`): each trained by
   :func:`ctbmd.model.workflow.train_cohort`, the code behind ``ctbmd train
   --protocol NAME``, with the protocol's fixed layout (input, task, muscle
   crop, test split, offline copies). On a CPU every network is
   ``densenet_small`` (the issue allows it; DenseNet-121 and ResNet-50 need about
   10-100x the CPU time); ``--full`` keeps each protocol's own network. Peng
   2024 and Huang 2025 are run as their papers' classifiers (``binary``) and,
   for r² and MAE, as regressors on the same layout.
3. **Application**: every model is applied by ``ctbmd run --model``'s code
   (:func:`ctbmd.api.analyse` with ``model=``) to one external patient.
4. **Table**: per protocol, internal (out-of-fold; Li 2024's held-out 20% test
   split) and external: Pearson r, r², MAE, RMSE (mg/cm³, per vertebra, against
   the QCT-equivalent truth) and AUC, F1, sensitivity, specificity and the
   ACR-QCT 3-class accuracy. The binary question is each paper's: low BMD
   (below 120 mg/cm³) for Li, Peng and JCAT 2023, osteoporosis (below 80
   mg/cm³) for Yasaka and Huang. A regressor's AUC ranks its predicted BMD; a
   classifier's ranks its probability, and it calls "low" at p >= 0.5. Beside
   each row: the paper's published figure. The papers used DXA (JCAT, Yasaka,
   Huang) or QCT (Li, Peng) on real patients; here every target is the
   phantoms' QCT-equivalent BMD, so the comparison is of the method, not of the
   cohorts. A last row gives phantomless calibration alone on the same
   vertebrae (the sets of ``peng2024``), which every network starts from, and
   a second table the vertebra MAE of each regressor and of calibration alone
   per site and contrast phase.

Writes ``summary.json``, ``table.md`` and one model folder per run (each with
``input_examples.png``) under ``--out``; prints the table and the time of each step.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dl_cohort import simulate_cohort  # noqa: E402

#: The scanners: tube voltage (kV), effective-energy offset (keV), noise SD range (HU), PSF FWHM range (mm,
#: kernel sharpness: smaller is sharper), slice thickness choices (mm), and the contrast phase of each
#: patient in turn. ``external`` is held out.
SITES: dict[str, dict] = {
    "A": {"kvp": 120, "offset": 0.0, "noise": (8, 14), "psf": (0.9, 1.1), "slices": (1.0, 2.0),
          "phases": ("native",)},
    "B": {"kvp": 100, "offset": 1.5, "noise": (12, 20), "psf": (1.1, 1.4), "slices": (2.0, 3.0),
          "phases": ("native", "portal_venous")},
    "C": {"kvp": 140, "offset": -1.5, "noise": (15, 25), "psf": (0.7, 0.9), "slices": (1.0, 3.0),
          "phases": ("native", "native", "arterial")},
    "D": {"kvp": 80, "offset": 0.5, "noise": (20, 30), "psf": (1.0, 1.3), "slices": (3.0, 5.0),
          "phases": ("native",)},
    "external": {"kvp": 120, "offset": 2.0, "noise": (10, 20), "psf": (0.75, 0.85), "slices": (1.0, 2.0),
                 "phases": ("native", "portal_venous")},
}

#: (run name, protocol, settings beside the preset, binary question threshold in mg/cm³).
RUNS: tuple[tuple[str, str, dict, float], ...] = (
    ("li2024", "li2024", {}, 120.0),
    ("peng2024", "peng2024", {}, 120.0),
    ("peng2024-binary", "peng2024", {"task": "binary"}, 120.0),
    ("jcat2023", "jcat2023", {}, 120.0),
    ("yasaka2020", "yasaka2020", {}, 80.0),
    ("huang2025-regression", "huang2025", {"task": "regression"}, 80.0),
    ("huang2025", "huang2025", {}, 80.0),
)

#: The papers' figures beside each run: (internal, external) per metric; None where not published.
PUBLISHED: dict[str, dict[str, tuple]] = {
    "li2024": {"r2": ("0.95-0.97", None), "acr_accuracy": ("0.88-0.91", None)},
    "peng2024": {"mae": ("8.52", "13.89"), "rmse": ("10.80", "20.36")},
    "peng2024-binary": {"auc": ("0.974", "0.938"), "f1": (">=0.91", None)},
    "jcat2023": {"r": ("0.81", None)},
    "yasaka2020": {"r": ("0.852", "0.840"), "auc": ("0.965", "0.970")},
    "huang2025": {"auc": (None, "0.827-0.865"), "f1": (None, "0.865")},
}


def draw_sites(per_site: int, external: int, seed: int) -> list[tuple[str, dict]]:
    """Seeded (site, PhantomSpec fields) for every patient: ``per_site`` at each internal site, ``external`` at
    the external one."""
    rng = np.random.default_rng(seed)
    out = []
    for site, s in SITES.items():
        for k in range(external if site == "external" else per_site):
            l1 = float(rng.uniform(30.0, 250.0))
            bmd = {lv: round(l1 * float(rng.uniform(0.9, 1.1)), 1) if lv != "L1" else round(l1, 1)
                   for lv in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")}
            out.append((site, dict(
                bmd_mg_cm3=bmd, kvp=s["kvp"], energy_offset_kev=s["offset"],
                noise_hu=round(float(rng.uniform(*s["noise"])), 1),
                psf_fwhm_mm=round(float(rng.uniform(*s["psf"])), 2),
                slice_thickness_mm=float(rng.choice(s["slices"])), pixel_mm=round(float(rng.uniform(0.8, 1.3)), 2),
                marrow_fat_fraction=round(float(rng.uniform(0.2, 0.7)), 3),
                body_width_mm=round(float(rng.uniform(250, 450)), 1), phase=s["phases"][k % len(s["phases"])],
                rotation_deg=round(float(rng.uniform(-8, 8)), 1), tissue_spread=float(rng.choice([0.0, 0.005])),
                tissue_model="realistic", seed=int(seed * 1000 + len(out)))))
    return out


def _figures(ref: np.ndarray, value: np.ndarray, threshold: float, binary: bool) -> dict:
    """Per-vertebra figures of one set: regression agreement (regressors) and the binary question."""
    from scipy.stats import pearsonr
    from sklearn.metrics import f1_score, roc_auc_score

    low = ref < threshold
    out: dict = {"n": int(len(ref)), "n_low": int(low.sum())}
    if binary:
        score, called = value, value >= 0.5
        out.update(r=None, r2=None, mae=None, rmse=None, acr_accuracy=None)
    else:
        score, called = -value, value < threshold
        r = float(pearsonr(value, ref)[0]) if len(ref) > 2 else float("nan")
        err = value - ref
        acr = lambda v: np.digitize(v, [80.0, 120.0 + 1e-9])  # noqa: E731 - 0 osteoporosis, 1 osteopenia, 2 normal
        out.update(r=r, r2=r * r, mae=float(np.mean(np.abs(err))), rmse=float(np.sqrt(np.mean(err ** 2))),
                   acr_accuracy=float(np.mean(acr(value) == acr(ref))))
    both = 0 < low.sum() < len(low)
    out["auc"] = float(roc_auc_score(low, score)) if both else None
    out["f1"] = float(f1_score(low, called, zero_division=0)) if both else None
    out["sensitivity"] = float(np.mean(called[low])) if low.any() else None
    out["specificity"] = float(np.mean(~called[~low])) if (~low).any() else None
    return out


def evaluate_run(model_dir: Path, threshold: float, calibration: bool = False) -> dict:
    """Internal and external figures of one model folder from its ``oof_predictions.csv`` (with
    ``calibration``: of the calibration-only BMD of the same vertebrae)."""
    with open(model_dir / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    binary = "p_low_bmd" in rows[0] and not calibration
    col = "bmd_calibrated_mg_cm3" if calibration else ("p_low_bmd" if binary else "bmd_mg_cm3")
    internal = "test" if any(r["set"] == "test" for r in rows) else "out-of-fold"
    out = {}
    for name, sel in (("internal", internal), ("external", "external")):
        chosen = [r for r in rows if r["set"] == sel]
        ref = np.array([float(r["reference_bmd_mg_cm3"]) for r in chosen])
        val = np.array([float(r[col]) for r in chosen])
        out[name] = {"set": sel, "n_patients": len({r["patient_id"] for r in chosen}),
                     **_figures(ref, val, threshold, binary)}
    return out


def per_site(model_dir: Path, manifest: Path) -> dict:
    """Vertebra MAE (mg/cm³) of a regressor and of calibration alone, per site and contrast phase (the
    manifest's ``site`` and ``phase``): where the network gains on calibration and where it loses."""
    with open(manifest) as fh:
        group = {r["patient_id"]: f"{r['site']}/{r['phase']}" for r in csv.DictReader(fh)}
    with open(model_dir / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    out: dict = {}
    for r in rows:
        ref = float(r["reference_bmd_mg_cm3"])
        g = out.setdefault(group[r["patient_id"]], {"n": 0, "model": [], "calibration": []})
        g["n"] += 1
        g["model"].append(abs(float(r["bmd_mg_cm3"]) - ref))
        g["calibration"].append(abs(float(r["bmd_calibrated_mg_cm3"]) - ref))
    return {k: {"n": v["n"], "mae_model": float(np.mean(v["model"])), "mae_calibration": float(np.mean(v["calibration"]))}
            for k, v in sorted(out.items())}


def _cell(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def table(results: dict) -> str:
    """The Markdown table: one row per run and set, ctbmd's figure then the paper's in brackets."""
    head = ("| protocol | set | n pat / vert | r | r² | MAE | RMSE | AUC | F1 | sens | spec | ACR acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for run, res in results.items():
        pub = PUBLISHED.get(run, {})
        for k, setname in enumerate(("internal", "external")):
            f = res["figures"][setname]

            def c(key, digits=3):
                paper = pub.get(key, (None, None))[k]
                return _cell(f[key], digits) + (f" ({paper})" if paper else "")

            label = f"{setname} ({f['set']})" if setname == "internal" else setname
            lines.append(f"| {run} | {label} | {f['n_patients']} / {f['n']} | {c('r')} | {c('r2')} | "
                         f"{c('mae', 2)} | {c('rmse', 2)} | {c('auc')} | {c('f1')} | {c('sensitivity')} | "
                         f"{c('specificity')} | {c('acr_accuracy')} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-site", type=int, default=15, help="patients at each of the 4 internal sites")
    ap.add_argument("--external", type=int, default=20, help="patients at the external site")
    ap.add_argument("--seed", type=int, default=16, help="cohort seed")
    ap.add_argument("--out", type=Path, default=Path("out/seed-protocols"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs-3d", type=int, default=30, help="maximum epochs of the 3-D protocols")
    ap.add_argument("--epochs-2d", type=int, default=40, help="maximum epochs of the 2-D protocols")
    ap.add_argument("--epochs-copies", type=int, default=3,
                    help="maximum epochs with Yasaka's 60 offline copies (each epoch holds 61 passes)")
    ap.add_argument("--full", action="store_true", help="each protocol's own network (for a GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="comma-separated run names")
    a = ap.parse_args(argv)

    from ctbmd.api import analyse
    from ctbmd.model.protocols import resolve
    from ctbmd.model.train import TrainConfig
    from ctbmd.model.workflow import train_cohort

    t0 = time.time()
    work = a.out.resolve()
    (work / "phantoms").mkdir(parents=True, exist_ok=True)
    drawn = draw_sites(a.per_site, a.external, a.seed)
    extra = [{"site": site, "split": "external" if site == "external" else "cv"} for site, _ in drawn]
    rows, errors, manifest = simulate_cohort([spec for _, spec in drawn], work, a.workers, extra)
    t_cohort = time.time() - t0
    print(f"cohort: {len(drawn)} patients ({len(drawn) - a.external} internal at 4 sites, {a.external} external), "
          f"{len(rows)} vertebrae, {len(errors)} failed; {t_cohort:.0f} s", flush=True)
    probe = next(r for r in rows if r["split"] == "external")  # the patient each model is applied to
    probe_ct, probe_labels = work / probe["ct"], work / probe["labels"]

    wanted = a.runs.split(",")
    results: dict = {}
    for name, protocol, given, threshold in RUNS:
        if name not in wanted:
            continue
        settings = dict(given)
        if not a.full:
            settings.setdefault("arch", "densenet_small")
        settings_all = resolve(protocol, settings)
        copies = settings_all.get("augment_copies", 0)
        settings.setdefault("epochs", a.epochs_copies if copies else (a.epochs_3d if settings_all["dims"] == "3d"
                                                                       else a.epochs_2d))
        settings.setdefault("patience", 1 if copies else 6)
        cfg = TrainConfig(**{**resolve(protocol, settings), "protocol": protocol, "seed": 0, "device": a.device})
        model_dir = work / "models" / name
        if model_dir.exists():
            import shutil
            shutil.rmtree(model_dir)
        t1 = time.time()
        last = [0.0]

        def progress(kind, info, name=name):
            if kind == "epoch" and (info["epoch"] == 1 or time.time() - last[0] > 60):
                last[0] = time.time()
                print(f"  {name} fold {info['member'] + 1}/{info['folds']} epoch {info['epoch']:2d}: "
                      f"train {info['train_loss']:.3f} stop {info['stop_loss']:.3f} (best {info['best_epoch']})",
                      flush=True)

        config = train_cohort(manifest, model_dir, cfg, cache_dir=work / "cache",
                              description=f"benchmarks/seed_protocols.py run {name}", progress=progress)
        t_train = time.time() - t1
        applied = analyse(probe_ct, labels=probe_labels, label_map="verse", kvp=float(probe["kvp"]), model=model_dir)
        value_key = "p_low_bmd" if cfg.task == "binary" else "bmd_mg_cm3"
        applied_levels = sorted(applied.dl.levels) if applied.dl is not None else []
        figures = evaluate_run(model_dir, threshold)
        sites = None if cfg.task == "binary" else per_site(model_dir, manifest)
        results[name] = {"protocol": protocol, "threshold_mg_cm3": threshold,
                         "settings": {k: v for k, v in config["training"]["config"].items()
                                      if k in ("arch", "dims", "muscle", "task", "augment", "augment_copies", "folds",
                                               "test_fraction", "epochs", "patience")},
                         "seconds": round(t_train, 1), "figures": figures, "per_site": sites,
                         "applied": {"patient": probe["patient_id"], "value": value_key, "levels": applied_levels,
                                     "values": {lv: round(p.value, 3) for lv, p in
                                                (applied.dl.levels.items() if applied.dl else [])}},
                         "input_examples": str(model_dir / "input_examples.png")}
        fi, fe = figures["internal"], figures["external"]
        print(f"{name}: {t_train:.0f} s; internal r² {_cell(fi['r2'])} MAE {_cell(fi['mae'], 2)} AUC {_cell(fi['auc'])}; "
              f"external r² {_cell(fe['r2'])} MAE {_cell(fe['mae'], 2)} AUC {_cell(fe['auc'])}; applied to "
              f"{probe['patient_id']}: {len(applied_levels)} levels", flush=True)
    base = next((n for n in ("peng2024", "jcat2023", "li2024") if n in results), None)
    if base is not None:  # what the networks add: phantomless calibration alone on the same vertebrae
        results["calibration only"] = {"protocol": None, "threshold_mg_cm3": 120.0, "seconds": 0.0,
                                       "figures": evaluate_run(work / "models" / base, 120.0, calibration=True),
                                       "note": f"the vertebrae and sets of {base}"}
    total = time.time() - t0
    text = table(results)
    print("\n" + text)
    groups = sorted({g for v in results.values() if v.get("per_site") for g in v["per_site"]})
    if groups:
        print("Vertebra MAE (mg/cm³) per site and phase, network / calibration alone:")
        w = max(len(g) for g in groups) + 2
        print(f"{'run':22s}" + "".join(g.rjust(w) for g in groups))
        for k, v in results.items():
            if v.get("per_site"):
                sites = v["per_site"]
                print(f"{k:22s}" + "".join((f"{sites[g]['mae_model']:.1f} / {sites[g]['mae_calibration']:.1f}"
                                            if g in sites else "–").rjust(w) for g in groups))
    print("Per vertebra against the QCT-equivalent truth; ctbmd's figure, the paper's in brackets. "
          "Binary question: below 120 mg/cm³ (li2024, peng2024, jcat2023), below 80 mg/cm³ (yasaka2020, huang2025).")
    arch = "each protocol's own" if a.full else "densenet_small"
    print(f"arch: {arch}; device {a.device}")
    print("time: cohort {:.0f} s, ".format(t_cohort)
          + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in results.items() if v["protocol"])
          + f"; total {total / 60:.1f} min")
    summary = {"sites": SITES, "n_patients": len(drawn), "n_external": a.external, "n_vertebrae": len(rows),
               "failed": errors, "full": a.full, "device": a.device, "runs": results,
               "seconds": {"cohort": round(t_cohort, 1), "total": round(total, 1)}}
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (work / "table.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
