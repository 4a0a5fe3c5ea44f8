"""``ctbmd train``: manifest in, cross-validated model folder out.

:func:`train_cohort` reads the manifest, extracts (or loads cached) crops,
splits the patients (:func:`ctbmd.model.train.patient_folds`), trains one
member per fold with early stopping, predicts each fold's validation patients
(out of fold) and the held-out test patients (ensemble of all members), and
writes the model folder (:mod:`ctbmd.model.store`) with:

* ``oof_predictions.csv``: per vertebra ``patient_id``, ``level``, ``set``
  (``out-of-fold``, ``test``, or an external site's name such as ``external``,
  ``external_2``), ``fold`` (-1 outside cross-validation), the reference, the
  model's value and the calibration-only ``bmd_calibrated_mg_cm3``;
* ``evaluation/<external site>/``: each external site evaluated on its own (a
  ``ctbmd evaluate`` report of the model, or ``metrics.json`` for a T-score);
* ``evaluation/model/`` and ``evaluation/calibration/``: ``ctbmd evaluate``
  reports (metrics.json, metrics.md, plots) of the model and of phantomless
  calibration on the same vertebrae, split by ``set``; for a T-score target,
  ``evaluation/metrics.json`` (r², MAE, RMSE, AUC) instead;
* ``history.csv`` (loss per member and epoch), ``failed.csv`` (scans and levels
  left out, with the reason);
* ``member_<k>.pt`` and ``config.json``;
* ``input_examples.png``: the HU channel of what the network sees for a few
  vertebrae (:func:`write_input_examples`), to check the input mode by eye.

While training, ``checkpoints/member_<k>.pt`` holds the state of the running
fold; ``resume=True`` continues from there and skips finished folds.
"""

from __future__ import annotations

import csv
import io as _io
import json
import shutil
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ctbmd import __version__
from ctbmd.classify import WHO_OSTEOPOROSIS_T
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.io import write_atomic
from ctbmd.model.cohort import Cohort, Samples, build_samples, external_number, is_external, read_manifest
from ctbmd.model.crops import FEATURES, HU_WINDOW, MG_CM3_SCALE, CropSpec, muscle_crop_record
from ctbmd.model.nets import ARCHS, DIMS
from ctbmd.model.store import MODEL_FORMAT
from ctbmd.model.train import (TASKS, Normaliser, TrainConfig, binary_threshold, build_net, patient_folds,
                               predict_arrays, resolve_device, resume_mismatch, train_member)

EVAL_BOOTSTRAP = 200


def is_phantom_cohort(cohort: Cohort) -> bool:
    """True when every CT sits beside a ``truth.json`` written by ``ctbmd simulate``."""
    for s in cohort.scans:
        truth = s.ct.parent / "truth.json"
        try:
            if not json.loads(truth.read_text()).get("schema", "").startswith("ctbmd-phantom-truth"):
                return False
        except (OSError, ValueError):
            return False
    return True


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def _evaluate_bmd(out: Path, samples: Samples, rows: np.ndarray, pred: np.ndarray, sets: np.ndarray) -> dict:
    """ctbmd evaluate reports for the model and for calibration; returns the headline figures."""
    from ctbmd import evaluate as ev

    ref = out / "evaluation" / "reference.csv"
    ref.parent.mkdir(parents=True, exist_ok=True)
    _write_text(ref, _csv_text(["patient_id", "level", "bmd_mg_cm3", "set"],
                               [[samples.patient[i], samples.level[i], f"{samples.target[i]:.3f}", sets[j]]
                                for j, i in enumerate(rows)]))
    reference = ev.read_reference(ref, split_column="set")
    summary = {}
    for name, values in (("model", pred), ("calibration", samples.baseline[rows])):
        p = out / "evaluation" / f"{name}_predictions.csv"
        _write_text(p, _csv_text(["patient_id", "level", "bmd_mg_cm3"],
                                 [[samples.patient[i], samples.level[i], f"{values[j]:.3f}"] for j, i in enumerate(rows)]))
        paired = ev.pair(ev.read_predictions(p), reference)
        result = ev.evaluate(paired, n_boot=EVAL_BOOTSTRAP, seed=0)
        ev.write_evaluation(paired, result, out / "evaluation" / name)
        summary[name] = {s: {"vertebra": {k: m["level"][k] for k in ("n", "r2", "mae", "rmse", "bias")},
                             "patient": {k: m["patient"][k] for k in ("n", "r2", "mae", "rmse", "bias")},
                             "auc_osteoporosis": m["diagnosis"]["auc_osteoporosis"],
                             "accuracy": m["diagnosis"]["accuracy"]}
                         for s, m in result["splits"].items()}
    for site in sorted({str(x) for x in sets if is_external(x)}, key=external_number):
        sel = [j for j, x in enumerate(sets) if str(x) == site]
        site_dir = out / "evaluation" / site
        site_dir.mkdir(parents=True, exist_ok=True)
        _write_text(site_dir / "reference.csv", _csv_text(
            ["patient_id", "level", "bmd_mg_cm3"],
            [[samples.patient[rows[j]], samples.level[rows[j]], f"{samples.target[rows[j]]:.3f}"] for j in sel]))
        _write_text(site_dir / "model_predictions.csv", _csv_text(
            ["patient_id", "level", "bmd_mg_cm3"],
            [[samples.patient[rows[j]], samples.level[rows[j]], f"{pred[j]:.3f}"] for j in sel]))
        paired = ev.pair(ev.read_predictions(site_dir / "model_predictions.csv"),
                         ev.read_reference(site_dir / "reference.csv"))
        ev.write_evaluation(paired, ev.evaluate(paired, n_boot=EVAL_BOOTSTRAP, seed=0), site_dir)
    return summary


def _write_summary(out: Path, summary: dict) -> dict:
    """Write the per-set ``summary`` to ``evaluation/metrics.json`` and each external site's part to
    ``evaluation/<site>/metrics.json``; return it."""
    (out / "evaluation").mkdir(parents=True, exist_ok=True)
    _write_text(out / "evaluation" / "metrics.json", json.dumps(summary, indent=2))
    for site in (n for n in summary if is_external(n)):
        (out / "evaluation" / site).mkdir(parents=True, exist_ok=True)
        _write_text(out / "evaluation" / site / "metrics.json", json.dumps(summary[site], indent=2))
    return summary


def _evaluate_patient_target(out: Path, samples: Samples, rows: np.ndarray, pred: np.ndarray, sets: np.ndarray,
                             target: str = "t_score") -> dict:
    """Per set: Pearson r and r², MAE, RMSE (scipy, sklearn) of the patient means of a per-patient target
    (T-score, TBS, ...); for a T-score also the AUC of osteoporosis (T <= -2.5, WHO)."""
    from scipy import stats
    from sklearn import metrics as skm

    summary = {}
    for name in sorted(set(sets)):
        sel = rows[sets == name]
        ps = np.array(sorted(set(samples.patient[sel])))
        ref = np.array([samples.target[sel][samples.patient[sel] == p].mean() for p in ps])
        prd = np.array([pred[sets == name][samples.patient[sel] == p].mean() for p in ps])
        porotic = ref <= WHO_OSTEOPOROSIS_T
        r = float(stats.pearsonr(ref, prd).statistic) if len(ps) > 2 and np.std(prd) > 0 and np.std(ref) > 0 else None
        summary[name] = {"n_patients": len(ps), "r": r, "r2": None if r is None else r * r,
                         "mae": float(skm.mean_absolute_error(ref, prd)),
                         "rmse": float(np.sqrt(skm.mean_squared_error(ref, prd))),
                         "auc_osteoporosis": (float(skm.roc_auc_score(porotic, -prd))
                                              if target == "t_score" and 0 < porotic.sum() < len(ps) else None)}
    return _write_summary(out, summary)


def write_input_examples(samples: Samples, dims: str, path: Path, n: int = 6, muscle: bool = False) -> None:
    """A PNG of the HU channel the network receives in mode ``dims``, for up to ``n`` vertebrae of different patients.

    Each row is one vertebra (patient and level named); each column one slice
    of the input (1 for ``2d``/``sagittal``, 3 for ``sagittal3``, 5 for
    ``2.5d``, the central axial, coronal and sagittal planes for ``3d``).
    Axial slices are shown anterior up, sagittal slices with anterior left and
    superior up. With ``muscle`` two more columns show the axial muscle crop
    (soft-tissue window) and its muscle mask over it.
    """
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - registers the PNG writer
    from matplotlib.figure import Figure

    from ctbmd.model.nets import STACKED, to_input

    picked, seen = [], set()
    for i, pid in enumerate(samples.patient):
        if pid not in seen:
            picked.append(i)
            seen.add(pid)
        if len(picked) == n:
            break
    if not picked:
        return
    images = torch.from_numpy(samples.images[picked])
    if dims == "3d":
        c = images.shape[-1] // 2
        panels = [[("axial", img[0, :, :, c]), ("coronal", img[0, :, c, :]), ("sagittal", img[0, c, :, :])]
                  for img in images]
    else:
        x = to_input(images, dims)  # (n, 3 * k, a, b): channel-major, k slices per channel
        k = STACKED[dims]
        plane = "sagittal" if dims.startswith("sagittal") else "axial"
        panels = [[(f"{plane} {j + 1}/{k}", x[r, j]) for j in range(k)] for r in range(len(picked))]
    if muscle and samples.muscle is not None:
        for r, i in enumerate(picked):
            panels[r] += [("muscle HU", torch.from_numpy(samples.muscle[i, 0])),
                          ("muscle mask", torch.from_numpy(samples.muscle[i]))]
    cols = len(panels[0])
    width = max(1.8 * cols + 0.4, 3.6)
    fig = Figure(figsize=(width, 1.9 * len(panels) + 0.4))
    axes = fig.subplots(len(panels), cols, squeeze=False)
    for r, row in enumerate(panels):
        for j, (name, sl) in enumerate(row):
            # transposed: axial rows P (anterior up, origin upper); coronal and sagittal rows S (superior up),
            # columns L or P (anterior left)
            origin = "upper" if name.startswith(("axial", "muscle")) else "lower"
            if name == "muscle mask":  # the soft-tissue image with the mask in red
                axes[r, j].imshow(sl[0].numpy().T, cmap="gray", vmin=-1, vmax=1, origin=origin)
                axes[r, j].imshow(np.ma.masked_equal(sl[1].numpy().T, 0), cmap="autumn", alpha=0.5, origin=origin)
            else:
                axes[r, j].imshow(sl.numpy().T, cmap="gray", vmin=-1, vmax=1, origin=origin)
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
            if r == 0:
                axes[r, j].set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(f"{samples.patient[picked[r]]} {samples.level[picked[r]]}", fontsize=8)
    title = (f"network input, --dims {dims}{' --muscle' if muscle else ''} (HU channel, window -250..1250 HU"
             + ("; muscle crop 160 mm wide, window -200..300 HU, muscle mask in red" if muscle else "") + ")")
    fig.suptitle(textwrap.fill(title, width=int(width * 12)), fontsize=9)  # about 12 characters per inch
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=90))


def _evaluate_binary(out: Path, samples: Samples, rows: np.ndarray, pred: np.ndarray, sets: np.ndarray,
                     threshold: float) -> dict:
    """Per set, per vertebra and per patient (mean probability against the patient's mean reference):
    AUC, F1, recall, precision, specificity and accuracy with bootstrap 95% CIs
    (:func:`ctbmd.evaluate.binary_agreement`); written to ``evaluation/metrics.json`` and, for each
    external site, ``evaluation/<site>/metrics.json``."""
    from ctbmd import evaluate as ev

    summary = {}
    for name in sorted(set(sets)):
        sel = rows[sets == name]
        p_sel = pred[sets == name]
        ps = np.array(sorted(set(samples.patient[sel])))
        ref_p = np.array([samples.target[sel][samples.patient[sel] == p].mean() for p in ps])
        prob_p = np.array([p_sel[samples.patient[sel] == p].mean() for p in ps])
        summary[name] = {
            "threshold": threshold, "low_means": f"reference below {threshold:g}",
            "vertebra": ev.binary_agreement(samples.target[sel] < threshold, p_sel, samples.patient[sel],
                                            n_boot=EVAL_BOOTSTRAP),
            "patient": ev.binary_agreement(ref_p < threshold, prob_p, ps, n_boot=EVAL_BOOTSTRAP)}
    return _write_summary(out, summary)


def _protocol_record(name: str) -> dict:
    """The ``protocol`` block of ``config.json``: the study, its fixed settings and published figures."""
    from ctbmd.model.protocols import PROTOCOLS

    p = PROTOCOLS[name]
    return {"name": p.name, "study": p.study, "fixed": p.fixed, "defaults": p.defaults, "thresholds": p.thresholds,
            "published": {k: list(v) if isinstance(v, tuple) else v for k, v in p.published.items()},
            "notes": p.notes}


def train_cohort(manifest: str | Path, out: str | Path, cfg: TrainConfig = TrainConfig(), spec: CropSpec = CropSpec(),
                 cache_dir: Path | None = None, resume: bool = False, description: str = "",
                 progress: Callable[[str, dict], None] | None = None) -> dict:
    """Train and cross-validate a BMD model on a manifest; write the model folder ``out``.

    Parameters
    ----------
    manifest : str or Path
        Cohort CSV (:func:`ctbmd.model.cohort.read_manifest`).
    out : str or Path
        Model folder to create (or to resume).
    cfg : TrainConfig
    spec : CropSpec
    cache_dir : Path, optional
        Crop cache (None: no cache).
    resume : bool
        Continue an interrupted run in ``out``.
    description : str
        Free text stored in ``config.json`` (where the cohort came from).
    progress : callable, optional
        ``progress(kind, info)`` with kind ``"scan"`` (``done``, ``total``,
        ``patient_id``) or ``"epoch"`` (see :func:`ctbmd.model.train.train_member`).

    Returns
    -------
    dict
        The ``config.json`` content.

    Raises
    ------
    UsageError
        ``out`` already holds a model, or an unfinished run without ``resume``, or
        one resumed with other settings than it was started with (only
        ``epochs``, ``patience`` and ``device`` may change);
        bad settings; too few patients for the folds.
    InvalidInputError
        Manifest problems, or no usable vertebra with a target.
    """
    out = Path(out)
    tick = progress or (lambda kind, info: None)
    if (out / "config.json").exists():
        raise UsageError("already holds a trained model (config.json); choose another --out", out)
    if (out / "checkpoints").exists() and not resume:
        raise UsageError("holds an unfinished training run; add --resume to continue it, or choose another --out", out)
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.patience < 1 or not 0 <= cfg.augment_copies <= 1000:
        raise UsageError("--epochs and --patience must be >= 1, --batch-size >= 2 and --augment-copies 0-1000")
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if cfg.arch not in ARCHS or cfg.dims not in DIMS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)} and --dims one of {', '.join(DIMS)} "
                         f"(got {cfg.arch!r}, {cfg.dims!r})")
    if cfg.task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)} (got {cfg.task!r})")
    if cfg.task == "binary" and cfg.classify:
        raise UsageError("--task binary has one output (the probability of low BMD); it cannot take --classify")
    if cfg.task == "categories":
        cfg = replace(cfg, classify=True)
    cohort = read_manifest(manifest, cfg.target)
    if cfg.classify and cohort.target not in ("bmd_mg_cm3", "t_score"):
        raise UsageError(f"--classify needs categories, which a {cohort.target} target has none of "
                         "(ACR for bmd_mg_cm3, WHO for t_score)")
    threshold = None
    if cfg.task == "binary":
        try:
            threshold = binary_threshold(cfg, cohort.target)
        except ValueError as exc:
            raise UsageError(str(exc), cohort.path) from None
    t0 = time.time()
    samples = build_samples(cohort, spec, cache_dir,
                            lambda done, total, pid: tick("scan", {"done": done, "total": total, "patient_id": pid}))
    if not len(samples):
        raise InvalidInputError("no usable vertebra with a reference value in any scan"
                                + (f" (first failure: {samples.failed[0][0]}: {samples.failed[0][1]})"
                                   if samples.failed else ""), cohort.path)
    extract_s = time.time() - t0
    named = {s.split for s in cohort.scans if is_external(s.split)}
    empty = sorted(named - {str(x) for x in samples.split}, key=external_number)
    if empty:
        raise InvalidInputError(f"external site {empty[0]!r} has no patient with a usable vertebra and a reference "
                                "(see which scans failed with --no-cache, or drop the site)", cohort.path)
    try:
        folds, test = patient_folds(samples, cfg.folds, cfg.seed, cohort.target, cfg.test_fraction)
    except ValueError as exc:
        raise UsageError(str(exc), cohort.path) from None
    if cfg.muscle and samples.muscle is None:
        raise InvalidInputError("--muscle: some cached crops have no muscle crop; rerun with --no-cache",
                                cohort.path)

    def muscle_of(ix: np.ndarray) -> np.ndarray | None:
        return samples.muscle[ix] if cfg.muscle else None

    out.mkdir(parents=True, exist_ok=True)
    write_input_examples(samples, cfg.dims, out / "input_examples.png", muscle=cfg.muscle)
    import torch

    members, history = [], []
    oof = np.full(len(samples), np.nan, np.float32)
    fold_of = np.full(len(samples), -1)
    t1 = time.time()
    for k, fold in enumerate(folds):
        wfile, mfile = out / f"member_{k}.pt", out / f"member_{k}.json"
        if resume and wfile.is_file() and mfile.is_file():
            meta = json.loads(mfile.read_text())
            changed = resume_mismatch(meta.get("config"), cfg)
            if changed:
                raise UsageError(f"fold {k} of the interrupted run was trained with other settings "
                                 f"({', '.join(changed)}); resume it with the same options, or start again in "
                                 "another --out", out)
            norm = Normaliser(**meta["normaliser"])
            net = build_net(cfg, len(FEATURES))
            net.load_state_dict(torch.load(wfile, map_location="cpu", weights_only=True))
            hist = meta["history"]
        else:
            try:
                net, norm, hist = train_member(samples, fold.fit, fold.stop, cfg, cohort.target, member=k,
                                               checkpoint=out / "checkpoints" / f"member_{k}.pt",
                                               progress=lambda info: tick("epoch", {**info, "folds": len(folds)}))
            except ValueError as exc:  # a checkpoint of other settings
                raise UsageError(str(exc), out) from None
            write_atomic(wfile, lambda p: torch.save(net.state_dict(), p))
            _write_text(mfile, json.dumps({"normaliser": asdict(norm), "history": hist, "config": asdict(cfg)}))
        net.to(device)
        oof[fold.validation], _ = predict_arrays(net, norm, samples.images[fold.validation],
                                                 samples.features[fold.validation], samples.baseline[fold.validation],
                                                 device, muscle=muscle_of(fold.validation))
        fold_of[fold.validation] = k
        members.append((net, norm))
        history += [{"member": k, **h} for h in hist]
    # the test patients and every external site: the ensemble of all members, none of which saw them
    external = np.nonzero([is_external(x) for x in samples.split])[0]
    held = np.concatenate([test, external]).astype(int)
    if len(held):
        oof[held] = np.mean([predict_arrays(n, nm, samples.images[held], samples.features[held],
                                            samples.baseline[held], device, muscle=muscle_of(held))[0]
                             for n, nm in members], axis=0)
    train_s = time.time() - t1
    rows = np.concatenate([np.concatenate([f.validation for f in folds]), test, external]).astype(int)
    sets = np.array(["out-of-fold"] * (len(rows) - len(held)) + ["test"] * len(test)
                    + [str(x) for x in samples.split[external]], dtype=object)
    pred = oof[rows]
    tname = cohort.target
    _write_text(out / "oof_predictions.csv", _csv_text(
        ["patient_id", "level", "set", "fold", f"reference_{tname}", "p_low_bmd" if threshold is not None else tname,
         "bmd_calibrated_mg_cm3"],
        [[samples.patient[i], samples.level[i], sets[j], int(fold_of[i]), f"{samples.target[i]:.3f}",
          f"{pred[j]:.3f}", f"{samples.baseline[i]:.3f}"] for j, i in enumerate(rows)]))
    _write_text(out / "history.csv", _csv_text(["member", "epoch", "train_loss", "stop_loss"],
                                               [[h["member"], h["epoch"], f"{h['train_loss']:.5f}",
                                                 f"{h['stop_loss']:.5f}"] for h in history]))
    _write_text(out / "failed.csv", _csv_text(["patient_id", "level", "reason"],
                                              [[p, "", r] for p, r in samples.failed]
                                              + [[p, lv, r] for p, lv, r in samples.skipped]))
    if threshold is not None:
        metrics = _evaluate_binary(out, samples, rows, pred, sets, threshold)
    elif tname == "bmd_mg_cm3":
        metrics = _evaluate_bmd(out, samples, rows, pred, sets)
    else:
        metrics = _evaluate_patient_target(out, samples, rows, pred, sets, tname)
    phantom = is_phantom_cohort(cohort)
    config = {
        "format": MODEL_FORMAT, "ctbmd_version": __version__, "target": tname,
        "target_units": {"bmd_mg_cm3": "mg/cm³ K2HPO4-equivalent (as the reference)", "t_score": "DXA T-score"}.get(
            tname, f"as the manifest's {tname!r} column"),
        "protocol": None if cfg.protocol is None else _protocol_record(cfg.protocol),
        "arch": cfg.arch, "dims": cfg.dims, "muscle": cfg.muscle, "classify": cfg.classify, "task": cfg.task,
        "binary_threshold": threshold,
        "preprocessing": {"crop_size": spec.size, "crop_spacing_mm": spec.spacing_mm, "hu_window": list(HU_WINDOW),
                          "mg_cm3_scale": MG_CM3_SCALE, "features": list(FEATURES),
                          "crop_frame": "LPS-aligned isotropic cube centred on the trabecular ROI",
                          "segmentation": "manifest labels, else the builtin segmenter",
                          "muscle_crop": muscle_crop_record() if cfg.muscle else None},
        "members": [{"weights": f"member_{k}.pt", "normaliser": asdict(nm)} for k, (_, nm) in enumerate(members)],
        "training": {
            "data": "simulated phantoms (ctbmd simulate)" if phantom else f"user cohort ({cohort.path.name})",
            "phantom_trained": phantom, "clinically_validated": False, "description": description,
            "manifest": str(cohort.path), "n_patients": int(len(set(samples.patient))),
            "n_vertebrae": int(len(samples)), "n_test_patients": int(len(set(samples.patient[test]))),
            "n_external_patients": {site: int(len(set(samples.patient[samples.split == site])))
                                    for site in sorted({str(x) for x in samples.split[external]},
                                                       key=external_number)},
            "failed_scans": len(samples.failed), "config": asdict(cfg),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": {"crops": round(extract_s, 1), "training": round(train_s, 1)},
            "out_of_fold": metrics,
        },
    }
    _write_text(out / "config.json", json.dumps(config, indent=2))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return config
