"""Deep-learning BMD model on a simulated cohort: 5-fold cross-validation against calibration only.

Usage::

    python benchmarks/dl_cohort.py                       # 60 patients, densenet_small, 5 folds
    python benchmarks/dl_cohort.py --n 20 --epochs 3 --out out/dl-small

Steps:

1. **Cohort**: ``--n`` phantoms from ``draw_cohort`` of ``benchmarks/accuracy.py``
   (seed ``--seed``): L1 BMD 30-250 mg/cm³ K2HPO4 (other levels within
   +-10%), kVp 80/100/120/140 in turn, noise 5-30 HU, slices 1-5 mm, pixels
   1.0-1.5 mm, marrow fat 20-70%, body width 250-450 mm, tissue-density spread
   0 or 0.5%, rotation +-8 degrees, and every fourth patient contrast-enhanced
   (arterial or portal venous). Each is written with ``ctbmd simulate``'s code
   (:func:`ctbmd.simulate.write_phantom`) and its crops are cut in the same
   worker (filling the crop cache).
2. **Manifest**: ``patient_id``, ``ct``, ``labels`` (the phantom's label map,
   as a hospital would give TotalSegmentator labels), ``label_map`` verse,
   ``kvp`` (a NIfTI carries none), ``level`` T11-L5 and ``bmd_mg_cm3`` = the
   QCT-equivalent truth, plus the ``phase``.
3. **Training**: :func:`ctbmd.model.workflow.train_cohort` (the code behind
   ``ctbmd train``), ``--arch`` densenet_small by default (DenseNet-121 needs
   about 10x the CPU time), 5 folds by patient, seed 0.
4. **Report**: out-of-fold r², MAE, RMSE per vertebra and per patient, and the
   ROC AUC of osteoporosis (patient BMD < 80 mg/cm³, ACR-QCT), for the model and
   for the calibration-only BMD of the same vertebrae, overall and by phase
   (native / contrast). Pearson r from scipy.stats, MAE/RMSE/AUC from
   sklearn (via :func:`ctbmd.evaluate.agreement` and ``roc_auc_score``).

Writes ``summary.json`` and the model folder under ``--out``; prints the tables
and the wall time of each step.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import draw_cohort  # noqa: E402

LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")


def make_one(args: tuple[int, dict, str]) -> dict:
    """Simulate phantom ``i`` into ``work/phantoms/pNNN`` and cache its crops (with its kVp, which a NIfTI lacks
    and the manifest's ``kvp`` column gives); return its manifest rows."""
    from ctbmd.errors import CtbmdError
    from ctbmd.model.cohort import CohortScan, scan_crops
    from ctbmd.model.crops import CropSpec
    from ctbmd.simulate import PhantomSpec, simulate_phantom, write_phantom

    i, spec_d, work = args
    pid = f"p{i:03d}"
    folder = Path(work) / "phantoms" / pid
    t = time.time()
    ph = simulate_phantom(PhantomSpec(**spec_d))
    write_phantom(ph, folder)
    sim_s = time.time() - t
    error = None
    try:
        scan_crops(CohortScan(pid, folder / "ct.nii.gz", folder / "labels.nii.gz", "verse", "cv",
                              float(spec_d["kvp"])), CropSpec(), Path(work) / "cache")
    except CtbmdError as exc:
        error = exc.one_line()
    rows = [{"patient_id": pid, "ct": f"phantoms/{pid}/ct.nii.gz", "labels": f"phantoms/{pid}/labels.nii.gz",
             "label_map": "verse", "kvp": spec_d["kvp"], "level": lv["level"],
             "bmd_mg_cm3": f"{lv['qct_equivalent_mg_cm3']:.3f}", "phase": spec_d["phase"]}
            for lv in ph.truth["levels"] if lv["level"] in LEVELS]
    return {"i": i, "rows": rows, "sim_s": sim_s, "crop_s": time.time() - t - sim_s, "error": error}


def simulate_cohort(specs: list[dict], work: Path, workers: int,
                    extra: list[dict] | None = None) -> tuple[list[dict], list[tuple[int, str]], Path]:
    """Simulate every patient of ``specs`` (:func:`make_one`, ``workers`` processes) and write
    ``work/manifest.csv``; ``extra[i]`` adds fields (such as the site and split) to patient ``i``'s rows.

    Returns the manifest rows, the failures as (patient index, reason), and the manifest's path.
    """
    rows, errors = [], []
    with ProcessPoolExecutor(workers) as pool:
        for rec in pool.map(make_one, [(i, s, str(work)) for i, s in enumerate(specs)]):
            more = extra[rec["i"]] if extra else {}
            for r in rec["rows"]:
                r.update(more)
            rows += rec["rows"]
            if rec["error"]:
                errors.append((rec["i"], rec["error"]))
            spec = specs[rec["i"]]
            print(f"[{rec['i'] + 1:3d}/{len(specs)}] " + "".join(f"{v} " for v in more.values())
                  + f"{spec['kvp']:3d} kV {spec['phase']:13s} simulate {rec['sim_s']:4.1f}s crops {rec['crop_s']:4.1f}s"
                  + (f"  FAILED {rec['error']}" if rec["error"] else ""), flush=True)
    manifest = work / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows, errors, manifest


def figures(oof: list[dict], value: str) -> dict:
    """Per-vertebra and per-patient agreement and the patient AUC of osteoporosis for one prediction column."""
    from sklearn.metrics import roc_auc_score

    from ctbmd.evaluate import agreement

    pred = np.array([float(r[value]) for r in oof])
    ref = np.array([float(r["reference_bmd_mg_cm3"]) for r in oof])
    out = {"vertebra": agreement(pred, ref).to_dict()}
    pids = sorted({r["patient_id"] for r in oof})
    # patient value: mean of L1 and L2 (ACR-QCT), as ctbmd reports a patient
    pp, pr = [], []
    for p in pids:
        own = [(float(r[value]), float(r["reference_bmd_mg_cm3"])) for r in oof
               if r["patient_id"] == p and r["level"] in ("L1", "L2")]
        if own:
            pp.append(np.mean([o[0] for o in own]))
            pr.append(np.mean([o[1] for o in own]))
    pp, pr = np.array(pp), np.array(pr)
    out["patient"] = agreement(pp, pr).to_dict()
    porotic = pr < 80.0
    out["auc_osteoporosis"] = float(roc_auc_score(porotic, -pp)) if 0 < porotic.sum() < len(pr) else float("nan")
    out["acr_accuracy"] = float(np.mean((np.digitize(pp, [80.0, 120.0 + 1e-9])) == np.digitize(pr, [80.0, 120.0 + 1e-9])))
    return out


def fmt(f: dict) -> str:
    v, p = f["vertebra"], f["patient"]
    return (f"vertebrae n {v['n']:3.0f}  r² {v['r2']:.3f}  MAE {v['mae']:5.2f}  RMSE {v['rmse']:5.2f} | "
            f"patients n {p['n']:2.0f}  r² {p['r2']:.3f}  MAE {p['mae']:5.2f} | AUC {f['auc_osteoporosis']:.3f}  "
            f"ACR acc {f['acr_accuracy']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="patients (phantoms)")
    ap.add_argument("--seed", type=int, default=7, help="cohort seed")
    ap.add_argument("--out", type=Path, default=Path("out/dl-cohort"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="densenet_small")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args(argv)

    from ctbmd.model.train import TrainConfig
    from ctbmd.model.workflow import train_cohort

    t0 = time.time()
    work = a.out.resolve()
    (work / "phantoms").mkdir(parents=True, exist_ok=True)
    specs = draw_cohort(a.n, a.seed)
    rows, errors, manifest = simulate_cohort(specs, work, a.workers)
    t1 = time.time()
    model_dir = work / "model"
    if model_dir.exists():
        import shutil
        shutil.rmtree(model_dir)
    cfg = TrainConfig(arch=a.arch, folds=a.folds, epochs=a.epochs, patience=a.patience, seed=0, device="cpu")
    last = [0.0]

    def progress(kind, info):
        if kind == "epoch" and (info["epoch"] == 1 or time.time() - last[0] > 30):
            last[0] = time.time()
            print(f"  fold {info['member'] + 1}/{info['folds']} epoch {info['epoch']:2d}: train {info['train_loss']:.3f} "
                  f"stop {info['stop_loss']:.3f} (best {info['best_epoch']})", flush=True)

    config = train_cohort(manifest, model_dir, cfg, cache_dir=work / "cache", description=f"benchmarks/dl_cohort.py "
                          f"n={a.n} seed={a.seed}", progress=progress)
    t2 = time.time()
    with open(model_dir / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    phase = {r["patient_id"]: r["phase"] for r in rows}
    groups = {"all": oof, "native": [r for r in oof if phase[r["patient_id"]] == "native"],
              "contrast": [r for r in oof if phase[r["patient_id"]] != "native"]}
    summary = {"n_patients": config["training"]["n_patients"], "n_vertebrae": config["training"]["n_vertebrae"],
               "failed": errors, "arch": a.arch, "seconds": {"cohort": round(t1 - t0, 1), "train": round(t2 - t1, 1),
                                                            "total": round(t2 - t0, 1)}, "results": {}}
    print(f"\ncohort: {summary['n_patients']} patients, {summary['n_vertebrae']} vertebrae "
          f"({len(errors)} failed); arch {a.arch}; out-of-fold, 5-fold by patient")
    for g, sel in groups.items():
        if not sel:
            continue
        summary["results"][g] = {}
        for name, col in (("model", "bmd_mg_cm3"), ("calibration", "bmd_calibrated_mg_cm3")):
            f = figures(sel, col)
            summary["results"][g][name] = f
            print(f"{g:8s} {name:11s} {fmt(f)}")
    print(f"\ntime: cohort {t1 - t0:.0f} s, training {t2 - t1:.0f} s, total {(t2 - t0) / 60:.1f} min")
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
