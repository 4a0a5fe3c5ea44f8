"""``ctbmd evaluate``: every metric equals a direct scikit-learn/scipy call; phantoms end to end; bad references."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from conftest import run_cli
from ctbmd import evaluate as ev
from ctbmd.classify import acr_category

CATS = np.array(ev.CATEGORIES, object)


def _cohort(tmp_path, bias=5.0, noise=8.0, n=60, seed=7):
    """Reference and prediction CSVs (L1-L2 per patient) with a set bias and noise; returns paths and arrays."""
    rng = np.random.default_rng(seed)
    ref_rows, pred_rows = ["patient_id,level,bmd_mg_cm3,split"], ["patient_id,level,bmd_mg_cm3"]
    for i in range(n):
        base = rng.uniform(30, 220)
        for lv in ("L1", "L2"):
            r = base * rng.uniform(0.95, 1.05)
            ref_rows.append(f"P{i:03d},{lv},{r:.6f},{'test' if i % 3 == 0 else 'train'}")
            pred_rows.append(f"P{i:03d},{lv},{r + bias + rng.normal(0, noise):.6f}")
    (tmp_path / "ref.csv").write_text("\n".join(ref_rows) + "\n")
    (tmp_path / "pred.csv").write_text("\n".join(pred_rows) + "\n")
    return tmp_path / "ref.csv", tmp_path / "pred.csv"


def _close(a, b):
    assert a == pytest.approx(b, abs=1e-9, rel=1e-9), (a, b)


def test_agreement_equals_scipy_and_sklearn(tmp_path):
    ref_csv, pred_csv = _cohort(tmp_path, bias=5.0, noise=8.0)
    paired = ev.pair(ev.read_predictions(pred_csv), ev.read_reference(ref_csv, split_column="split"))
    result = ev.evaluate(paired, n_boot=50, seed=1)
    for unit, x, y in (("level", paired.level_pred, paired.level_ref),
                       ("patient", paired.patient_pred, paired.patient_ref)):
        m = result["splits"]["all"][unit]
        r, p = stats.pearsonr(x, y)
        _close(m["r"], r)
        _close(m["p"], p)
        _close(m["r2"], r ** 2)
        _close(m["r2_identity"], skm.r2_score(y, x))
        _close(m["mae"], skm.mean_absolute_error(y, x))
        _close(m["rmse"], np.sqrt(skm.mean_squared_error(y, x)))
        _close(m["bias"], np.mean(x - y))
        _close(m["loa_low"], np.mean(x - y) - 1.96 * np.std(x - y, ddof=1))
        _close(m["loa_high"], np.mean(x - y) + 1.96 * np.std(x - y, ddof=1))
        assert m["n"] == len(x)
    # the set bias and noise are what is measured (levels: bias 5, SD 8)
    lv = result["splits"]["all"]["level"]
    assert 3.0 < lv["bias"] < 7.0 and 6.5 < lv["sd"] < 9.5
    # patients are the mean of L1-L2 on both sides
    assert len(paired.patient_id) == 60 and len(paired.level_pred) == 120
    # splits side by side, each with its own numbers and a CI around the value
    assert set(result["splits"]) == {"all", "train", "test"}
    test = result["splits"]["test"]
    assert test["patient"]["n"] == 20
    low, high = test["ci"]["patient.mae"]
    assert low <= test["patient"]["mae"] <= high


def test_diagnosis_equals_sklearn_with_known_flips():
    rng = np.random.default_rng(3)
    ref_cat = np.repeat(CATS, 20)
    pred_cat = ref_cat.copy()
    flips = {5: "osteopenia", 12: "osteoporosis", 25: "normal", 33: "osteoporosis", 47: "osteopenia"}
    for i, c in flips.items():
        pred_cat[i] = c
    centre = {"normal": 160.0, "osteopenia": 100.0, "osteoporosis": 55.0}
    bmd = np.array([centre[c] for c in pred_cat]) + rng.normal(0, 12, len(pred_cat))
    d = ev.diagnosis(ref_cat, pred_cat, bmd).to_dict()
    _close(d["accuracy"], (60 - len(flips)) / 60)
    _close(d["accuracy"], skm.accuracy_score(ref_cat, pred_cat))
    assert d["confusion"] == skm.confusion_matrix(ref_cat, pred_cat, labels=list(CATS)).tolist()
    prec, rec, f1, _ = skm.precision_recall_fscore_support(ref_cat, pred_cat, labels=list(CATS))
    for i, c in enumerate(CATS):
        _close(d[f"precision_{c}"], prec[i])
        _close(d[f"recall_{c}"], rec[i])
        _close(d[f"f1_{c}"], f1[i])
        _close(d[f"specificity_{c}"], skm.recall_score(ref_cat != c, pred_cat != c))
    for name in ("precision", "recall", "f1"):
        _close(d[f"{name}_macro"], getattr(skm, f"{name}_score" if name != "f1" else "f1_score")(
            ref_cat, pred_cat, labels=list(CATS), average="macro"))
    yb, ypb = ref_cat == "osteoporosis", pred_cat == "osteoporosis"
    b = d["binary"]
    assert b["confusion"] == skm.confusion_matrix(yb, ypb).tolist()
    _close(b["accuracy"], skm.accuracy_score(yb, ypb))
    _close(b["precision"], skm.precision_score(yb, ypb))
    _close(b["recall"], skm.recall_score(yb, ypb))
    _close(b["specificity"], skm.recall_score(~yb, ~ypb))
    _close(b["f1"], skm.f1_score(yb, ypb))
    _close(d["auc_osteoporosis"], skm.roc_auc_score(yb, -bmd))
    _close(d["auc_low_bmd"], skm.roc_auc_score(ref_cat != "normal", -bmd))
    # one of the 20 true osteoporosis patients (index 47) was called osteopenia: sensitivity 19/20;
    # two others (12, 33) were wrongly called osteoporosis: precision 19/21
    _close(b["recall"], 19 / 20)
    _close(b["precision"], 19 / 21)


def test_bootstrap_is_seeded(tmp_path):
    ref_csv, pred_csv = _cohort(tmp_path, n=30)
    paired = ev.pair(ev.read_predictions(pred_csv), ev.read_reference(ref_csv))
    a = ev.evaluate(paired, n_boot=40, seed=5)["splits"]["all"]["ci"]
    b = ev.evaluate(paired, n_boot=40, seed=5)["splits"]["all"]["ci"]
    c = ev.evaluate(paired, n_boot=40, seed=6)["splits"]["all"]["ci"]
    assert a == b and a != c


def test_dxa_reference_by_t_score(tmp_path):
    (tmp_path / "ref.csv").write_text("patient_id,t_score\nA,-3.1\nB,-1.8\nC,0.4\nD,-2.5\nE,-0.2\n")
    (tmp_path / "pred.csv").write_text("patient_id,bmd_mg_cm3\nA,62\nB,101\nC,150\nD,85\nE,131\n")
    paired = ev.pair(ev.read_predictions(tmp_path / "pred.csv"), ev.read_reference(tmp_path / "ref.csv"))
    assert list(paired.patient_ref_category) == ["osteoporosis", "osteopenia", "normal", "osteoporosis", "normal"]
    d = ev.evaluate(paired, n_boot=0)["splits"]["all"]["diagnosis"]
    _close(d["accuracy"], 4 / 5)  # D: T = -2.5 is osteoporosis, 85 mg/cm³ is osteopenia
    _close(d["auc_osteoporosis"], 1.0)


def test_evaluate_phantom_runs_against_their_truth(phantom_cohort, tmp_path):
    root = phantom_cohort
    ref = tmp_path / "ref.csv"
    rows = [(root / n / "reference.csv").read_text().splitlines() for n in ("a", "b", "c")]
    ref.write_text("\n".join([rows[0][0]] + [r for part in rows for r in part[1:]]) + "\n")
    out = tmp_path / "eval"
    rc, so, se = run_cli("evaluate", "--pred", root / "results", "--ref", ref, "--out", out, "--bootstrap", "200")
    assert rc == 0, se
    metrics = json.loads((out / "metrics.json").read_text())
    allm = metrics["splits"]["all"]
    assert allm["patient"]["n"] == 3
    assert allm["level"]["n"] >= 15  # T12-L5 found in each phantom
    assert allm["patient"]["mae"] <= 5.0 and allm["level"]["mae"] <= 8.0
    assert allm["diagnosis"]["accuracy"] == 1.0  # QCT-equivalent truth about 81, 25, 170 mg/cm³
    low, high = allm["ci"]["level.mae"]
    assert low <= allm["level"]["mae"] <= high
    for name in ("metrics.md", "pairs.csv", "scatter.png", "bland_altman.png", "confusion.png", "roc.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| MAE (mg/cm³) |" in (out / "metrics.md").read_text()
    # the patient categories agree with the truth on both sides
    truth = [json.loads((root / n / "truth.json").read_text())["patient"]["qct_equivalent_mg_cm3"] for n in "abc"]
    assert sorted(acr_category(t) for t in truth) == ["normal", "osteopenia", "osteoporosis"]


@pytest.mark.parametrize("name, text, message", [
    ("missing_column", "patient_id,level,bmd\nA,L1,100\n", "missing column 'bmd_mg_cm3'"),
    ("unknown_level", "patient_id,level,bmd_mg_cm3\nA,L1,100\nA,L9,98\n", "unknown level name 'L9'"),
    ("duplicate", "patient_id,level,bmd_mg_cm3\nA,L1,100\nA,L1,101\n", "duplicate patient 'A' level L1"),
    ("duplicate_dxa", "patient_id,t_score\nA,-1\nA,-2\n", "duplicate patient 'A'"),
    ("empty", "", "empty file"),
    ("header_only", "patient_id,level,bmd_mg_cm3\n", "empty file"),
    ("g_cm2", "patient_id,level,bmd_mg_cm3\nA,L1,0.85\nB,L1,0.91\nC,L1,1.02\n", "g/cm²"),
    ("no_values", "patient_id,age\nA,70\n", "missing column"),
    ("bad_t", "patient_id,t_score\nA,-25\n", "outside -10..10"),
])
def test_bad_references_give_one_line_errors(tmp_path, name, text, message):
    ref = tmp_path / f"{name}.csv"
    ref.write_text(text)
    pred = tmp_path / "pred.csv"
    pred.write_text("patient_id,bmd_mg_cm3\nA,100\n")
    out = tmp_path / "out"
    rc, so, se = run_cli("evaluate", "--pred", pred, "--ref", ref, "--out", out)
    assert rc == 3, (rc, se)
    assert message in se and str(ref) in se, se
    assert "Traceback" not in se and len(se.strip().splitlines()) == 1, se
    assert not out.exists()


def test_unmatched_prediction_is_named(tmp_path):
    (tmp_path / "ref.csv").write_text("patient_id,level,bmd_mg_cm3\nA,L1,100\n")
    (tmp_path / "pred.csv").write_text("patient_id,bmd_mg_cm3\nA,100\nZ9,80\n")
    rc, so, se = run_cli("evaluate", "--pred", tmp_path / "pred.csv", "--ref", tmp_path / "ref.csv",
                         "--out", tmp_path / "out")
    assert rc == 3 and "'Z9'" in se and "unmatched" in se and "Traceback" not in se, se
