"""A trained model on disk, loading it, and applying it to one scan's crops.

Model folder (``ctbmd train --out MODEL_DIR``)
----------------------------------------------
``config.json``
    ``format`` (:data:`MODEL_FORMAT`), the target, network (``arch``,
    ``dims``, ``muscle``), the preprocessing the model expects (crop size and
    spacing, HU window, density scale, feature names, and the muscle crop's
    geometry for a ``--muscle`` model), one entry per ensemble member
    (weights file and its :class:`~ctbmd.model.targets.Normaliser`), and
    ``training``: what the model was trained on (``data``, ``phantom_trained``,
    ``clinically_validated`` = false unless the user states otherwise), the
    cohort size, the settings and the out-of-fold metrics. It is written last:
    a folder without it is an unfinished run.
``member_<k>.pt``
    The weights (``state_dict``) of the network trained in fold ``k``; they
    load with ``torch.load(weights_only=True)``. Prediction averages the
    members (a cross-validation ensemble).

Nothing else is needed to predict: no crop cache, manifest or training code
state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ctbmd.classify import CATEGORIES
from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.model.crops import FEATURES, HU_WINDOW, MG_CM3_SCALE, CropSpec, VertebraCrop, muscle_crop_record
from ctbmd.result import Result
from ctbmd.types import LevelPrediction, ModelOutput  # the model's results, in the types layer

MODEL_FORMAT = "ctbmd-bmd-model 1"


@dataclass
class BmdModel:
    """A loaded model folder.

    Attributes
    ----------
    path : Path
    config : dict
        ``config.json``.
    members : list of (torch.nn.Module, Normaliser)
    spec : CropSpec
        Crop geometry the model expects.
    """

    path: Path
    config: dict
    members: list
    spec: CropSpec

    @property
    def target(self) -> str:
        """``bmd_mg_cm3``, ``t_score`` or another per-patient column the model was trained on (``tbs``)."""
        return self.config["target"]

    def describe(self) -> dict:
        """The ``model`` block of ``result.json``: where the model came from and what it claims."""
        t = self.config["training"]
        binary = self.config.get("task") == "binary"
        return {"path": str(self.path), "format": self.config["format"],
                "target": "p_low_bmd" if binary else self.target, "trained_on_target": self.target,
                "task": self.config.get("task", "regression"), "binary_threshold": self.config.get("binary_threshold"),
                "arch": self.config["arch"], "dims": self.config["dims"], "muscle": bool(self.config.get("muscle")),
                "members": len(self.members),
                "trained_on": t["data"], "phantom_trained": t["phantom_trained"],
                "clinically_validated": t["clinically_validated"], "n_patients": t["n_patients"],
                "n_vertebrae": t["n_vertebrae"], "description": t.get("description", ""),
                "out_of_fold": t.get("out_of_fold", {}),
                "note": ("Trained on simulated phantoms only: a research model, not for clinical use."
                         if t["phantom_trained"] else "Research model; not a medical device.")}

    def predict(self, crops: list[VertebraCrop]) -> list[LevelPrediction]:
        """Predict every crop (ensemble mean over the members).

        Parameters
        ----------
        crops : list of VertebraCrop
            From :func:`ctbmd.model.crops.extract_crops` with :attr:`spec`.

        Raises
        ------
        InvalidInputError
            If the crops do not have the shape the model expects, or the model
            reads the muscle crop (``--muscle``) and a crop has none.
        """
        import torch

        from ctbmd.model.train import predict_arrays

        if not crops:
            return []
        images = np.stack([c.image for c in crops])
        if images.shape[1:] != (3,) + (self.spec.size,) * 3:
            raise InvalidInputError(f"crops of shape {images.shape[1:]} do not match the model's "
                                    f"{(3,) + (self.spec.size,) * 3}", self.path)
        features = np.stack([c.features for c in crops])
        baseline = np.array([c.bmd_calibrated_mg_cm3 for c in crops], np.float32)
        muscle = None
        if self.config.get("muscle"):
            if any(c.muscle is None for c in crops):
                raise InvalidInputError("the model reads the muscle crop (`muscle`), which these crops lack", self.path)
            muscle = np.stack([c.muscle for c in crops])
        values, probs = [], []
        for net, norm in self.members:
            prediction = predict_arrays(net, norm, images, features, baseline, torch.device("cpu"), muscle=muscle)
            values.append(prediction.values)
            probs.append(prediction.probabilities)
        values = np.stack(values)
        mean_p = np.mean(probs, axis=0) if probs[0] is not None else None
        return [LevelPrediction(c.level, float(values[:, i].mean()), float(values[:, i].std()),
                                {n: float(mean_p[i, j]) for j, n in enumerate(CATEGORIES)} if mean_p is not None else None)
                for i, c in enumerate(crops)]


def load_model(path: str | Path) -> BmdModel:
    """Load a model folder written by ``ctbmd train``, on the CPU.

    Raises
    ------
    UsageError
        The folder does not exist or holds no ``config.json`` (not a model, or
        training did not finish).
    InvalidInputError
        ``config.json`` is unreadable or of another format, a weights file is
        missing or does not fit the network, or the model's preprocessing
        differs from this ctbmd version's (HU window, density scale, features,
        or for a ``--muscle`` model the muscle crop's settings).
    """
    import torch

    from ctbmd.model.targets import Normaliser, TrainConfig
    from ctbmd.model.train import build_net

    path = Path(path)
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise UsageError("model folder not found", path)
    if not cfg_path.is_file():
        raise UsageError("no config.json: not a ctbmd model folder, or its training did not finish "
                         "(rerun ctbmd train with `resume`)", path)
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"unreadable config.json ({type(exc).__name__})", cfg_path) from None
    if config.get("format") != MODEL_FORMAT:
        raise InvalidInputError(f"model format {config.get('format')!r} is not {MODEL_FORMAT!r}", cfg_path)
    pre = config["preprocessing"]
    if (tuple(pre["hu_window"]) != HU_WINDOW or pre["mg_cm3_scale"] != MG_CM3_SCALE
            or tuple(pre["features"]) != FEATURES):
        raise InvalidInputError("the model expects other preprocessing (HU window, density scale or features) "
                                "than this ctbmd version makes", cfg_path)
    if config.get("muscle") and pre.get("muscle_crop") != muscle_crop_record():
        raise InvalidInputError("the model expects another muscle crop (size, spacing, window or mask) than this "
                                "ctbmd version makes", cfg_path)
    tc = TrainConfig(arch=config["arch"], dims=config["dims"], classify=config["classify"],
                     muscle=bool(config.get("muscle", False)))
    members = []
    for m in config["members"]:
        wpath = path / m["weights"]
        if not wpath.is_file():
            raise InvalidInputError(f"weights file {m['weights']} is missing", path)
        net = build_net(tc, len(FEATURES))
        try:
            net.load_state_dict(torch.load(wpath, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad file
            raise InvalidInputError(f"cannot load weights ({type(exc).__name__}: {str(exc)[:120]})", wpath) from None
        net.eval()
        members.append((net, Normaliser(**m["normaliser"])))
    return BmdModel(path=path, config=config, members=members,
                    spec=CropSpec(size=pre["crop_size"], spacing_mm=pre["crop_spacing_mm"]))


def add_model(result: Result, model: BmdModel) -> Result:
    """Apply a learned model to an analysed scan: the step after :func:`ctbmd.pipeline.analyse`.

    Every measured level is cropped around its trabecular ROI
    (:func:`ctbmd.model.crops.extract_crops`, the geometry in ``model.spec``)
    and predicted by the ensemble.

    Parameters
    ----------
    result : Result
        The pipeline's analysis of one scan.
    model : BmdModel
        From :func:`load_model`.

    Returns
    -------
    Result
        ``result`` with ``dl`` set (:class:`~ctbmd.types.ModelOutput`) and one
        warning per level the model could not read.

    Raises
    ------
    InvalidInputError
        The crops do not have the shape the model expects.
    """
    from ctbmd.model.crops import extract_crops

    cut = extract_crops(result.ct, result.roi_labels, result.levels, result.calibration,
                        result.phase, model.spec, vertebra_labels=result.seg.labels)
    skipped = cut.skipped
    preds = model.predict(cut.crops)
    described = model.describe()  # a binary model's value is the probability of low BMD ("p_low_bmd")
    dl = ModelOutput(model=described, target=described["target"], levels={p.level: p for p in preds},
                     skipped=skipped)
    notes = tuple(f"{lv}: no model value ({why})" for lv, why in skipped.items())
    return replace(result, dl=dl, warnings=tuple(result.warnings) + notes)
