"""``ctbmd train``: manifest in, cross-validated model folder out.

:func:`train_cohort` reads the manifest, extracts (or loads cached) crops,
splits the patients (:func:`ctbmd.model.targets.patient_folds`), trains one
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
* ``member_<k>.pt`` and ``config.json``, whose ``training.out_of_fold`` holds the
  headline figures (:mod:`ctbmd.model.evaluation`: a figure that cannot be
  computed is ``null``, with the reason, never ``NaN``);
* ``input_examples.png``: the HU channel of what the network sees for a few
  vertebrae (:func:`write_input_examples`), to check the input mode by eye.

While training, ``checkpoints/member_<k>.pt`` holds the state of the running
fold; ``resume=True`` continues from there and skips finished folds.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ctbmd import __version__
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.io import write_atomic
from ctbmd.model.cohort import (BUILTIN_TARGETS, Cohort, Samples, build_samples, external_number, is_external,
                                read_manifest)
from ctbmd.model.crops import FEATURES, HU_WINDOW, MG_CM3_SCALE, CropSpec, muscle_crop_record
from ctbmd.model.errors import ModelSettingsError
from ctbmd.model.evaluation import (OutOfFold, csv_text, evaluate_binary, evaluate_bmd, evaluate_patient_target,
                                    finite_json, write_text)
from ctbmd.model.nets import ARCHS, DIMS, Dims
from ctbmd.model.store import MODEL_FORMAT
from ctbmd.model.targets import (TASKS, Fold, Normaliser, Splits, TrainConfig, binary_threshold, patient_folds,
                                 resolve_device, resume_mismatch)
from ctbmd.model.train import TrainedMember, build_net, predict_arrays, train_member


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


def write_input_examples(samples: Samples, dims: Dims, path: Path, n: int = 6, muscle: bool = False) -> None:
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


def _protocol_record(name: str) -> dict:
    """The ``protocol`` block of ``config.json``: the study, its fixed settings and published figures."""
    from ctbmd.model.protocols import PROTOCOLS

    p = PROTOCOLS[name]
    return {"name": p.name, "study": p.study, "fixed": p.fixed, "defaults": p.defaults, "thresholds": p.thresholds,
            "published": {k: list(v) if isinstance(v, tuple) else v for k, v in p.published.items()},
            "notes": p.notes}


def _checked_config(out: Path, cfg: TrainConfig, resume: bool) -> TrainConfig:
    """``cfg`` checked against the model folder ``out`` and itself; ``task="categories"`` turns on ``classify``.

    Raises
    ------
    UsageError
        ``out`` holds a model, or an unfinished run without ``resume``; bad settings.
    """
    if (out / "config.json").exists():
        raise UsageError("already holds a trained model (config.json); choose another `out`", out)
    if (out / "checkpoints").exists() and not resume:
        raise UsageError("holds an unfinished training run; add `resume` to continue it, or choose another `out`", out)
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.patience < 1 or not 0 <= cfg.augment_copies <= 1000:
        raise UsageError("`epochs` and `patience` must be >= 1, `batch_size` >= 2 and `augment_copies` 0-1000")
    resolve_device(cfg.device)  # an unknown device, or CUDA where there is none, is refused before any work
    if cfg.arch not in ARCHS or cfg.dims not in DIMS:
        raise UsageError(f"`arch` must be one of {', '.join(ARCHS)} and `dims` one of {', '.join(DIMS)} "
                         f"(got {cfg.arch!r}, {cfg.dims!r})")
    if cfg.task not in TASKS:
        raise UsageError(f"`task` must be one of {', '.join(TASKS)} (got {cfg.task!r})")
    if cfg.task == "binary" and cfg.classify:
        raise UsageError("`task` binary has one output (the probability of low BMD); it cannot take `classify`")
    return replace(cfg, classify=True) if cfg.task == "categories" else cfg


def _read_cohort(manifest: str | Path, cfg: TrainConfig) -> Cohort:
    """The manifest, checked against ``cfg`` (a class head needs a target with categories)."""
    cohort = read_manifest(manifest, cfg.target)
    if cfg.classify and cohort.target not in BUILTIN_TARGETS:
        raise UsageError(f"`classify` needs categories, which a {cohort.target} target has none of "
                         "(ACR for bmd_mg_cm3, WHO for t_score)")
    return cohort


def _threshold(cfg: TrainConfig, cohort: Cohort) -> float | None:
    """The binary task's "low BMD" threshold (None for the other tasks); its error names the manifest."""
    if cfg.task != "binary":
        return None
    try:
        return binary_threshold(cfg, cohort.target)
    except ModelSettingsError as exc:
        raise ModelSettingsError(exc.reason, cohort.path) from None


def _usable_samples(cohort: Cohort, spec: CropSpec, cache_dir: Path | None,
                    tick: Callable[[str, dict], None]) -> Samples:
    """The cohort's crops with their targets (:func:`ctbmd.model.cohort.build_samples`).

    Raises
    ------
    InvalidInputError
        No usable vertebra at all, or an external site without one.
    """
    samples = build_samples(cohort, spec, cache_dir,
                            lambda done, total, pid: tick("scan", {"done": done, "total": total, "patient_id": pid}))
    if not len(samples):
        raise InvalidInputError("no usable vertebra with a reference value in any scan"
                                + (f" (first failure: {samples.failed[0][0]}: {samples.failed[0][1]})"
                                   if samples.failed else ""), cohort.path)
    named = {s.split for s in cohort.scans if is_external(s.split)}
    empty = sorted(named - {str(x) for x in samples.split}, key=external_number)
    if empty:
        raise InvalidInputError(f"external site {empty[0]!r} has no patient with a usable vertebra and a reference "
                                "(see which scans failed with `no_cache`, or drop the site)", cohort.path)
    return samples


def _member(out: Path, k: int, fold: Fold, samples: Samples, cfg: TrainConfig, target: str, resume: bool,
            progress: Callable[[dict], None]) -> TrainedMember:
    """Fold ``k``'s member: read back from ``out`` when a resumed run finished it, else trained and saved there.

    Raises
    ------
    UsageError
        The finished fold, or the interrupted one's checkpoint, was trained with other settings than ``cfg``.
    """
    import torch

    wfile, mfile = out / f"member_{k}.pt", out / f"member_{k}.json"
    if resume and wfile.is_file() and mfile.is_file():
        meta = json.loads(mfile.read_text())
        changed = resume_mismatch(meta.get("config"), cfg)
        if changed:
            raise UsageError(f"fold {k} of the interrupted run was trained with other settings "
                             f"({', '.join(changed)}); resume it with the same options, or start again in "
                             "another `out`", out)
        norm = Normaliser(**meta["normaliser"])
        net = build_net(cfg, len(FEATURES))
        net.load_state_dict(torch.load(wfile, map_location="cpu", weights_only=True))
        return TrainedMember(net=net, normaliser=norm, history=meta["history"])
    try:
        member = train_member(samples, fold.fit, fold.stop, cfg, target, member=k,
                              checkpoint=out / "checkpoints" / f"member_{k}.pt", progress=progress)
    except ModelSettingsError as exc:  # a checkpoint of other settings
        raise ModelSettingsError(exc.reason, out) from None
    write_atomic(wfile, lambda p: torch.save(member.net.state_dict(), p))
    write_text(mfile, json.dumps({"normaliser": asdict(member.normaliser), "history": member.history,
                                  "config": asdict(cfg)}))
    return member


@dataclass(frozen=True)
class _Ensemble:
    """The trained members, every evaluated vertebra's honest prediction, and the loss history."""

    members: list[TrainedMember]
    oof: OutOfFold
    history: list[dict]


def _cross_validate(out: Path, samples: Samples, splits: Splits, cfg: TrainConfig, target: str, resume: bool,
                    tick: Callable[[str, dict], None]) -> _Ensemble:
    """One member per fold, each predicting its fold's validation patients; the test patients and every
    external site predicted by the ensemble of all members, none of which saw them."""
    device = resolve_device(cfg.device)

    def predict(m: TrainedMember, ix: np.ndarray) -> np.ndarray:
        return predict_arrays(m.net, m.normaliser, samples.images[ix], samples.features[ix], samples.baseline[ix],
                              device, muscle=samples.muscle[ix] if cfg.muscle else None).values

    members, history = [], []
    value = np.full(len(samples), np.nan, np.float32)
    fold_of = np.full(len(samples), -1)
    for k, fold in enumerate(splits.folds):
        m = _member(out, k, fold, samples, cfg, target, resume,
                    lambda info: tick("epoch", {**info, "folds": len(splits.folds)}))
        m.net.to(device)
        value[fold.validation] = predict(m, fold.validation)
        fold_of[fold.validation] = k
        members.append(m)
        history += [{"member": k, **h} for h in m.history]
    external = np.nonzero([is_external(x) for x in samples.split])[0]
    held = np.concatenate([splits.test, external]).astype(int)
    if len(held):
        value[held] = np.mean([predict(m, held) for m in members], axis=0)
    rows = np.concatenate([np.concatenate([f.validation for f in splits.folds]), splits.test, external]).astype(int)
    sets = np.array(["out-of-fold"] * (len(rows) - len(held)) + ["test"] * len(splits.test)
                    + [str(x) for x in samples.split[external]], dtype=object)
    return _Ensemble(members=members, oof=OutOfFold(rows=rows, sets=sets, values=value[rows], fold=fold_of[rows]),
                     history=history)


def _write_tables(out: Path, samples: Samples, ensemble: _Ensemble, target: str, binary: bool) -> None:
    """``oof_predictions.csv``, ``history.csv`` and ``failed.csv``."""
    oof = ensemble.oof
    write_text(out / "oof_predictions.csv", csv_text(
        ["patient_id", "level", "set", "fold", f"reference_{target}", "p_low_bmd" if binary else target,
         "bmd_calibrated_mg_cm3"],
        [[samples.patient[i], samples.level[i], oof.sets[j], int(oof.fold[j]), f"{samples.target[i]:.3f}",
          f"{oof.values[j]:.3f}", f"{samples.baseline[i]:.3f}"] for j, i in enumerate(oof.rows)]))
    write_text(out / "history.csv", csv_text(["member", "epoch", "train_loss", "stop_loss"],
                                             [[h["member"], h["epoch"], f"{h['train_loss']:.5f}",
                                               f"{h['stop_loss']:.5f}"] for h in ensemble.history]))
    write_text(out / "failed.csv", csv_text(["patient_id", "level", "reason"],
                                            [[p, "", r] for p, r in samples.failed]
                                            + [[p, lv, r] for p, lv, r in samples.skipped]))


def _evaluate(out: Path, samples: Samples, oof: OutOfFold, target: str, threshold: float | None) -> dict:
    """The out-of-fold evaluation of the task and target (:mod:`ctbmd.model.evaluation`)."""
    if threshold is not None:
        return evaluate_binary(out, samples, oof, threshold)
    if target == "bmd_mg_cm3":
        return evaluate_bmd(out, samples, oof)
    return evaluate_patient_target(out, samples, oof, target)


def _config_record(cohort: Cohort, cfg: TrainConfig, spec: CropSpec, samples: Samples, splits: Splits,
                   ensemble: _Ensemble, threshold: float | None, metrics: dict, description: str,
                   seconds: dict[str, float]) -> dict:
    """The content of ``config.json`` (:mod:`ctbmd.model.store`)."""
    tname = cohort.target
    external = np.nonzero([is_external(x) for x in samples.split])[0]
    phantom = is_phantom_cohort(cohort)
    return {
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
        "members": [{"weights": f"member_{k}.pt", "normaliser": asdict(m.normaliser)}
                    for k, m in enumerate(ensemble.members)],
        "training": {
            "data": "simulated phantoms (ctbmd simulate)" if phantom else f"user cohort ({cohort.path.name})",
            "phantom_trained": phantom, "clinically_validated": False, "description": description,
            "manifest": str(cohort.path), "n_patients": int(len(set(samples.patient))),
            "n_vertebrae": int(len(samples)), "n_test_patients": int(len(set(samples.patient[splits.test]))),
            "n_external_patients": {site: int(len(set(samples.patient[samples.split == site])))
                                    for site in sorted({str(x) for x in samples.split[external]},
                                                       key=external_number)},
            "failed_scans": len(samples.failed), "config": asdict(cfg),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "out_of_fold": metrics,
        },
    }


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
        The ``config.json`` content; ``training.out_of_fold`` holds the
        figures :func:`ctbmd.model.evaluation.out_of_fold_lines` prints.

    Raises
    ------
    UsageError
        ``out`` already holds a model, or an unfinished run without ``resume``, or
        one resumed with other settings than it was started with (only
        ``epochs``, ``patience`` and ``device`` may change);
        bad settings; too few patients for the folds (the last two as
        :class:`ctbmd.model.errors.ModelSettingsError` where the model code finds them).
    InvalidInputError
        Manifest problems, or no usable vertebra with a target.
    """
    out = Path(out)
    tick = progress or (lambda kind, info: None)
    cfg = _checked_config(out, cfg, resume)
    cohort = _read_cohort(manifest, cfg)
    threshold = _threshold(cfg, cohort)
    t0 = time.time()
    samples = _usable_samples(cohort, spec, cache_dir, tick)
    extract_s = time.time() - t0
    try:
        splits = patient_folds(samples, cfg.folds, cfg.seed, cohort.target, cfg.test_fraction)
    except ModelSettingsError as exc:
        raise ModelSettingsError(exc.reason, cohort.path) from None
    if cfg.muscle and samples.muscle is None:
        raise InvalidInputError("`muscle`: some cached crops have no muscle crop; rerun with `no_cache`",
                                cohort.path)
    out.mkdir(parents=True, exist_ok=True)
    write_input_examples(samples, cfg.dims, out / "input_examples.png", muscle=cfg.muscle)
    t1 = time.time()
    ensemble = _cross_validate(out, samples, splits, cfg, cohort.target, resume, tick)
    train_s = time.time() - t1
    _write_tables(out, samples, ensemble, cohort.target, threshold is not None)
    metrics = _evaluate(out, samples, ensemble.oof, cohort.target, threshold)
    config = _config_record(cohort, cfg, spec, samples, splits, ensemble, threshold, metrics, description,
                            {"crops": extract_s, "training": train_s})
    write_text(out / "config.json", json.dumps(finite_json(config), indent=2))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return config
