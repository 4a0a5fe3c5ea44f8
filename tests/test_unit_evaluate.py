"""Unit tests of ctbmd.evaluate on tiny hand-made data: known answers, scipy/sklearn as oracle, no subprocess."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from ctbmd import evaluate as ev
from ctbmd.errors import InvalidInputError

N, PEN, POR = ev.CATEGORIES


def test_agreement_of_a_hand_made_example():
    ref = np.array([100.0, 100.0, 80.0, 120.0])
    pred = np.array([104.0, 98.0, 86.0, 126.0])  # differences 4, -2, 6, 6
    a = ev.agreement(pred, ref)
    assert a.n == 4
    assert a.bias_mg_cm3 == pytest.approx(3.5)
    sd = math.sqrt((0.5 ** 2 + 5.5 ** 2 + 2.5 ** 2 + 2.5 ** 2) / 3)
    assert a.sd_mg_cm3 == pytest.approx(sd)
    assert (a.loa_low_mg_cm3, a.loa_high_mg_cm3) == pytest.approx((3.5 - 1.96 * sd, 3.5 + 1.96 * sd))
    assert a.mae_mg_cm3 == pytest.approx(18 / 4)
    assert a.rmse_mg_cm3 == pytest.approx(math.sqrt(92 / 4))
    assert a.r2_identity == pytest.approx(1 - 92 / 800)  # residuals about the identity vs SD of ref (mean 100)
    r, p = stats.pearsonr(pred, ref)
    assert (a.r, a.p, a.r2) == pytest.approx((r, p, r ** 2))
    d = a.to_dict()
    assert list(d) == ["n", "r", "p", "r2", "r2_identity", "mae", "rmse", "bias", "sd", "loa_low", "loa_high"]
    assert d["n"] == 4.0 and isinstance(d["n"], float) and d["bias"] == a.bias_mg_cm3


def test_agreement_needs_enough_pairs():
    two = ev.agreement(np.array([100.0, 90.0]), np.array([98.0, 95.0]))
    assert math.isnan(two.r) and math.isnan(two.r2) and two.sd_mg_cm3 == pytest.approx(np.std([2, -5], ddof=1))
    one = ev.agreement(np.array([100.0]), np.array([98.0]))
    assert one.bias_mg_cm3 == pytest.approx(2.0) and math.isnan(one.sd_mg_cm3) and math.isnan(one.loa_low_mg_cm3)
    none = ev.agreement(np.array([]), np.array([]))
    assert none.n == 0 and all(math.isnan(v) for k, v in none.to_dict().items() if k != "n")
    flat = ev.agreement(np.array([100.0, 100.0, 100.0]), np.array([90.0, 95.0, 99.0]))  # prediction does not vary
    assert math.isnan(flat.r) and flat.mae_mg_cm3 == pytest.approx((10 + 5 + 1) / 3)


def test_diagnosis_of_a_small_confusion():
    ref = np.array([N, N, N, PEN, PEN, POR, POR, POR], object)
    pred = np.array([N, N, PEN, PEN, POR, POR, POR, PEN], object)
    bmd = np.array([150, 140, 110, 100, 70, 60, 50, 90], float)
    d = ev.diagnosis(ref, pred, bmd)
    assert d.n == 8 and d.confusion == ((2, 1, 0), (0, 1, 1), (0, 1, 2))
    assert d.accuracy == pytest.approx(5 / 8)
    normal, penia, porosis = d.per_class
    assert (normal.precision, normal.recall, normal.specificity) == pytest.approx((1.0, 2 / 3, 1.0))
    assert (penia.precision, penia.recall) == pytest.approx((1 / 3, 1 / 2))
    assert (porosis.precision, porosis.recall, porosis.specificity) == pytest.approx((2 / 3, 2 / 3, 4 / 5))
    assert d.macro.precision == pytest.approx((1 + 1 / 3 + 2 / 3) / 3)
    assert d.binary.confusion == ((4, 1), (1, 2))  # [[TN, FP], [FN, TP]]
    assert (d.binary.recall, d.binary.specificity, d.binary.precision) == pytest.approx((2 / 3, 4 / 5, 2 / 3))
    assert d.auc_osteoporosis == pytest.approx(skm.roc_auc_score(ref == POR, -bmd))
    assert d.auc_low_bmd == pytest.approx(skm.roc_auc_score(ref != N, -bmd))
    assert cohen_kappa_of(d.confusion) == pytest.approx(skm.cohen_kappa_score(ref, pred))
    out = d.to_dict()
    assert list(out)[:6] == ["n", "confusion", "accuracy", "precision_normal", "precision_osteopenia",
                             "precision_osteoporosis"]
    assert list(out)[-3:] == ["binary", "auc_osteoporosis", "auc_low_bmd"]
    assert out["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 1, 2]] and out["binary"]["confusion"] == [[4, 1], [1, 2]]
    assert out["specificity_osteoporosis"] == pytest.approx(4 / 5) and out["f1_macro"] == d.macro.f1


def cohen_kappa_of(confusion) -> float:
    """Cohen's kappa from a confusion matrix (observed vs chance agreement), to check the matrix's layout."""
    cm = np.array(confusion, float)
    total = cm.sum()
    chance = (cm.sum(0) * cm.sum(1)).sum() / total ** 2
    return (np.trace(cm) / total - chance) / (1 - chance)


def test_diagnosis_undefined_ratios_are_nan_and_left_out_of_the_macro_mean():
    ref = np.array([N, N, POR], object)
    pred = np.array([N, N, POR], object)  # osteopenia neither in the reference nor predicted
    d = ev.diagnosis(ref, pred, np.array([150.0, 130.0, 60.0]))
    assert math.isnan(d.per_class[1].precision) and math.isnan(d.per_class[1].recall)
    assert d.macro.precision == 1.0 and d.accuracy == 1.0
    one_class = ev.diagnosis(np.array([N, N], object), np.array([N, PEN], object), np.array([130.0, 100.0]))
    assert math.isnan(one_class.auc_osteoporosis) and math.isnan(one_class.auc_low_bmd)


def _qct(levels, path="ref.csv", splits=None):
    return ev.Reference("qct", path, levels=tuple(ev.LevelValue(p, lv, v) for p, lv, v in levels),
                        splits=splits or {})


def test_pair_matches_patients_and_levels():
    ref = _qct([("A", "L1", 100.0), ("A", "L2", 110.0), ("A", "L3", 120.0), ("B", "L1", 70.0), ("B", "L2", 80.0),
                ("C", "L1", 150.0), ("D", "L1", 90.0)], splits={"A": "train", "B": "test"})
    pred = ev.Predictions("pred.csv", levels=(ev.LevelValue("A", "L1", 104.0), ev.LevelValue("A", "L2", 108.0),
                                              ev.LevelValue("B", "L1", 72.0), ev.LevelValue("B", "L4", 99.0)),
                          patients=(ev.PatientValue("A", 106.0, category=N, levels_used=("L1", "L2")),
                                    ev.PatientValue("B", 85.5, category=PEN, levels_used=("L1", "L4")),
                                    ev.PatientValue("D", 95.0, category=PEN, levels_used=("L2",))))
    p = ev.pair(pred, ref)
    # level pairs: only (patient, level) in both; B L4 has no reference
    assert list(zip(p.level_patient, p.level_name)) == [("A", "L1"), ("A", "L2"), ("B", "L1")]
    assert list(p.level_ref) == [100.0, 110.0, 70.0] and list(p.level_pred) == [104.0, 108.0, 72.0]
    # a patient's reference is the mean of the reference levels its prediction used (A: L1+L2, not L3)
    assert list(p.patient_id) == ["A", "B"] and list(p.patient_ref) == [105.0, 70.0]
    assert list(p.patient_ref_category) == [ev.CATEGORIES[1], ev.CATEGORIES[2]]  # 105 osteopenia, 70 osteoporosis
    assert list(p.patient_split) == ["train", "test"]
    assert p.unmatched_reference == ("C", "D")  # D was predicted at L2 only, where the reference has nothing
    assert p.notes == ("patient D: no reference at the levels used (L2)",)


def test_pair_names_unknown_patients_without_cli_options():
    ref = _qct([("A", "L1", 100.0)])
    pred = ev.Predictions("pred.csv", (), tuple(ev.PatientValue(f"Z{i}", 90.0, category=PEN) for i in range(7)))
    with pytest.raises(InvalidInputError) as info:
        ev.pair(pred, ref)
    assert "'Z0', 'Z1', 'Z2', 'Z3', 'Z4' and 2 more" in info.value.reason and info.value.path == "pred.csv"
    assert "--" not in info.value.reason


def test_read_reference_of_a_good_csv(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("\ufeffPatient_ID;Level;BMD_mg_cm3;Set\nA;l 1;101.5;train\nA;L2;NA;train\n\nB;T12;75;test\n")
    ref = ev.read_reference(path, split_column="set")
    assert ref.kind == "qct" and ref.path == str(path)
    assert ref.levels == (ev.LevelValue("A", "L1", 101.5), ev.LevelValue("B", "T12", 75.0))  # NA left out
    assert ref.splits == {"A": "train", "B": "test"}
    dxa = tmp_path / "dxa.csv"
    dxa.write_text("patient_id,t_score,category\nA,-2.6,\nB,-1.2,\nC,,normal\nD,-3.0,osteopenia\n")
    ref = ev.read_reference(dxa)
    assert ref.kind == "dxa" and [p.category for p in ref.patients] == [POR, PEN, N, PEN]  # a given category wins
    assert ref.patients[0].t_score == -2.6 and ref.patients[2].t_score is None


@pytest.mark.parametrize("text, row_col", [
    ("patient_id,level,bmd\nA,L1,100\n", "missing column 'bmd_mg_cm3' (columns found: patient_id, level, bmd)"),
    ("patient_id,level,bmd_mg_cm3\nA,L1,100\nA,L2,abc\n", "row 3: bmd_mg_cm3 'abc' is not a number"),
    ("patient_id,level,bmd_mg_cm3\nA,L1,100\nA,L1,101\n", "duplicate patient 'A' level L1 (rows 2 and 3)"),
    ("patient_id,level,bmd_mg_cm3\nA,L1,100,7\n", "row 2 has 4 fields, the header has 3"),
    ("patient_id,category\nA,fragile\n", "row 2: category 'fragile' is not one of normal, osteopenia, osteoporosis"),
])
def test_read_reference_errors_name_the_file_and_the_problem(tmp_path, text, row_col):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        ev.read_reference(path)
    assert info.value.path == str(path) and info.value.reason == row_col


def test_read_csv_table_and_require_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("Patient_ID\tCT \n A \t a.nii.gz\n")
    header, rows = ev.read_csv_table(path)
    assert header == ["patient_id", "ct"] and rows == [{"patient_id": "A", "ct": "a.nii.gz"}]
    ev.require_columns(header, ("patient_id", "ct"), path)
    with pytest.raises(InvalidInputError, match=r"missing column 'label', 'kvp' \(columns found: patient_id, ct\)"):
        ev.require_columns(header, ("patient_id", "label", "kvp"), path)
    with pytest.raises(InvalidInputError, match="file not found"):
        ev.read_csv_table(tmp_path / "none.csv")


def test_figure_text_formats_values_intervals_and_reasons():
    m = {"patient": {"mae": 4.256, "r": math.nan, "sd": math.nan, "n": 1.0},
         "diagnosis": {"binary": {"f1": 0.5}},
         "ci": {"patient.mae": [3.0, 5.5], "diagnosis.binary.f1": [None, 0.7]},
         "not_computed": {"patient.r": "needs at least 3 patients, got 1"}}
    assert ev.figure_text(m, "patient.mae", "{:.2f}") == "4.26"
    assert ev.figure_text(m, "patient.mae", "{:.1f}", ci=True) == "4.3 [3.0, 5.5]"
    assert ev.figure_text(m, "patient.r", "{:.3f}") == "not computed: needs at least 3 patients, got 1"
    assert ev.figure_text(m, "patient.sd", "{:.3f}") == "–"  # NaN without a reason
    assert ev.figure_text(m, "level.mae", "{:.3f}") == "–"  # absent (a DXA reference has no agreement)
    assert ev.figure_text(m, "diagnosis.binary.f1", "{:.2f}", ci=True) == "0.50"  # an interval with a gap


def test_evaluate_with_two_patients_says_what_is_not_computed():
    ref = _qct([("A", "L1", 100.0), ("A", "L2", 104.0), ("B", "L1", 70.0), ("B", "L2", 75.0)])
    pred = ev.Predictions("pred.csv", (ev.LevelValue("A", "L1", 98.0), ev.LevelValue("A", "L2", 110.0),
                                       ev.LevelValue("B", "L1", 80.0), ev.LevelValue("B", "L2", 72.0)),
                          (ev.PatientValue("A", 104.0, category=PEN, levels_used=("L1", "L2")),
                           ev.PatientValue("B", 76.0, category=POR, levels_used=("L1", "L2"))))
    result = ev.evaluate(ev.pair(pred, ref), n_boot=50, seed=0)
    assert list(result["splits"]) == ["all"]
    m = result["splits"]["all"]
    assert m["ci"] == {} and m["not_computed"]["ci"] == "needs at least 3 patients, got 2"
    assert m["not_computed"]["patient.r"] == "needs at least 3 patients, got 2"
    assert "patient.sd" not in m["not_computed"] and "level.r" not in m["not_computed"]  # 4 level pairs
    assert m["patient"]["bias"] == pytest.approx(((104 - 102) + (76 - 72.5)) / 2)
    assert m["patient"] == ev.agreement(np.array([104.0, 76.0]), np.array([102.0, 72.5])).to_dict()
    assert m["level"]["r"] == pytest.approx(stats.pearsonr([98, 110, 80, 72], [100, 104, 70, 75]).statistic)
    assert m["diagnosis"]["accuracy"] == 1.0 and m["diagnosis"]["auc_osteoporosis"] == 1.0
    assert ev.figure_text(m, "patient.r2", "{:.3f}") == "not computed: needs at least 3 patients, got 2"


def test_binary_agreement_auc_equals_sklearn():
    rng = np.random.default_rng(4)
    low = rng.random(40) < 0.4
    p_low = np.clip(0.3 * low + rng.random(40) * 0.7, 0, 1)
    groups = np.repeat(np.arange(20), 2)
    m = ev.binary_agreement(low, p_low, groups, n_boot=0)
    assert m["auc"]["value"] == pytest.approx(skm.roc_auc_score(low, p_low)) and m["auc"]["ci95"] is None
    assert m["f1"]["value"] == pytest.approx(skm.f1_score(low, p_low >= 0.5))
    assert m["accuracy"]["value"] == pytest.approx(skm.accuracy_score(low, p_low >= 0.5))
    assert (m["n"], m["n_low"]) == (40, int(low.sum()))
    lo, hi = ev.binary_agreement(low, p_low, groups, n_boot=30, seed=2)["auc"]["ci95"]
    assert lo <= m["auc"]["value"] <= hi
    one_class = ev.binary_agreement(np.zeros(4, bool), np.array([0.1, 0.6, 0.2, 0.3]), np.arange(4), n_boot=30)
    assert one_class["auc"] == {"value": None, "ci95": None} and one_class["recall"]["value"] is None
    assert one_class["specificity"]["value"] == pytest.approx(3 / 4)
