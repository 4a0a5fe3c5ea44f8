"""Unit tests of the model package's small parts: known answers on arrays built here, no subprocess."""

import json
import math
import typing

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from ctbmd.errors import UsageError  # noqa: E402
from ctbmd.model.cohort import Samples  # noqa: E402
from ctbmd.model.errors import ModelSettingsError  # noqa: E402
from ctbmd.model.evaluation import finite_json, out_of_fold_lines  # noqa: E402
from ctbmd.model.targets import (Normaliser, Splits, TrainConfig, binary_threshold, categories,  # noqa: E402
                                 patient_folds, resolve_device, resume_mismatch)


def _samples(n_patients: int, levels: int = 2) -> Samples:
    n = n_patients * levels
    patient = np.repeat([f"p{i}" for i in range(n_patients)], levels).astype(object)
    target = np.repeat(np.linspace(60.0, 200.0, n_patients), levels).astype(np.float32)
    return Samples(images=np.zeros((n, 3, 2, 2, 2), np.float32), features=np.zeros((n, 11), np.float32),
                   baseline=target.copy(), target=target, patient=patient,
                   level=np.tile(["L1", "L2"][:levels], n_patients).astype(object),
                   split=np.array(["cv"] * n, dtype=object))


def test_settings_errors_are_usage_errors_and_value_errors():
    err = ModelSettingsError("too few", "m.csv")
    assert isinstance(err, UsageError) and isinstance(err, ValueError) and err.exit_code == 2
    assert str(err) == "m.csv: too few"
    with pytest.raises(ModelSettingsError, match="too few for 5 folds"):
        patient_folds(_samples(7), 5, seed=0, target="bmd_mg_cm3")
    with pytest.raises(ModelSettingsError, match="must be auto, cpu or cuda"):
        resolve_device("gpu")
    with pytest.raises(ModelSettingsError, match="needs threshold"):
        binary_threshold(TrainConfig(task="binary"), "tbs")


def test_closed_sets_are_the_literals():
    from ctbmd.model import nets, protocols, targets

    assert nets.ARCHS == typing.get_args(nets.Arch) and "densenet_small" in nets.ARCHS
    assert nets.DIMS == typing.get_args(nets.Dims) and "sagittal3" in nets.DIMS
    assert targets.TASKS == ("regression", "binary", "categories") and targets.DEVICES == ("auto", "cpu", "cuda")
    assert tuple(protocols.PROTOCOLS) == typing.get_args(protocols.ProtocolName)
    with pytest.raises(ModelSettingsError, match="unknown protocol"):
        protocols.resolve("nobody2030", {})


def test_acr_and_who_categories_at_their_limits():
    # ACR-QCT: above 120 normal, 80-120 osteopenia, below 80 osteoporosis (mg/cm³)
    assert categories(np.array([121.0, 120.0, 80.0, 79.9]), "bmd_mg_cm3").tolist() == [0, 1, 1, 2]
    # WHO: -1 or above normal, between osteopenia, -2.5 or below osteoporosis
    assert categories(np.array([-1.0, -1.1, -2.4, -2.5]), "t_score").tolist() == [0, 1, 1, 2]


def test_normaliser_encodes_and_decodes_a_residual_and_a_binary_target():
    norm = Normaliser((0.0,), (1.0,), residual=True, target_mean=0.0, target_scale=20.0)
    target, baseline = np.array([100.0, 150.0]), np.array([90.0, 170.0])
    code = norm.encode(target, baseline)
    assert code.tolist() == [0.5, -1.0]
    assert np.allclose(norm.decode(code, baseline), target)
    binary = Normaliser((0.0,), (1.0,), residual=False, target_mean=0.0, target_scale=1.0, binary_threshold=120.0)
    assert binary.encode(np.array([119.0, 120.0]), baseline).tolist() == [1.0, 0.0]
    assert binary.decode(np.array([0.0]), baseline)[0] == pytest.approx(0.5)


def test_patient_folds_return_named_splits_without_shared_patients():
    s = _samples(8)
    split = patient_folds(s, 2, seed=1, target="bmd_mg_cm3")
    assert isinstance(split, Splits) and len(split.folds) == 2 and len(split.test) == 0
    validated = [set(s.patient[f.validation]) for f in split.folds]
    assert not validated[0] & validated[1] and validated[0] | validated[1] == set(s.patient)


def test_resume_mismatch_ignores_what_a_resumed_run_may_change():
    cfg = TrainConfig(epochs=5, seed=1)
    saved = json.loads(json.dumps(TrainConfig(epochs=9, seed=1, device="cpu").__dict__))
    assert resume_mismatch(saved, cfg) == []
    assert resume_mismatch({**saved, "seed": 2, "arch": "resnet18"}, cfg) == ["arch", "seed"]


def test_finite_json_writes_null_for_nan_and_infinity():
    obj = {"r2": math.nan, "n": 3, "ci": (1.0, math.inf), "nested": [{"auc": -math.inf}]}
    text = json.dumps(finite_json(obj))
    assert text == '{"r2": null, "n": 3, "ci": [1.0, null], "nested": [{"auc": null}]}'


def test_summary_lines_say_why_a_figure_is_missing():
    split = {"vertebra": {"n": 4.0, "r2": 0.98765, "mae": 5.554, "rmse": 6.0, "bias": 1.0},
             "patient": {"n": 1.0, "r2": None, "mae": 5.0, "rmse": 5.0, "bias": 1.0},
             "auc_osteoporosis": None, "accuracy": 1.0,
             "not_computed": {"patient.r2": "needs at least 3 patients, got 1",
                              "auc_osteoporosis": "needs at least 2 patients, got 1"}}
    bmd = {"target": "bmd_mg_cm3", "task": "regression", "training": {"out_of_fold": {"model": {"test": split}}}}
    assert out_of_fold_lines(bmd) == [
        "model       test       : vertebrae n 4, r² 0.988, MAE 5.55 mg/cm³, RMSE 6.00; "
        "AUC osteoporosis not computed (needs at least 2 patients, got 1)"]
    tbs = {"target": "tbs", "task": "regression", "training": {"out_of_fold": {"test": {
        "n_patients": 2, "r": None, "r2": None, "mae": 0.05, "rmse": 0.06, "auc_osteoporosis": None}}}}
    assert out_of_fold_lines(tbs) == ["test       : patients n 2, r n/a, MAE 0.050, RMSE 0.060 (tbs)"]
