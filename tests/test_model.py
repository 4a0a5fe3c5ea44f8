"""The DL model: patient-grouped seeded splits, reproducible training, crops on real data,
train -> reload -> `ctbmd run --model` on the real example, and bad input."""

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import DATA, EXAMPLE, run_cli

pytest.importorskip("torch")
pytest.importorskip("monai")

from ctbmd.model.cohort import Samples  # noqa: E402
from ctbmd.model.crops import HU_WINDOW  # noqa: E402
from ctbmd.model.train import TrainConfig, patient_folds, train_member  # noqa: E402


def synthetic_samples(n_patients=30, levels=3, size=16, seed=0, test_patients=0):
    """Random crops whose target is the baseline plus a patient effect (enough to exercise the code)."""
    rng = np.random.default_rng(seed)
    n = n_patients * levels
    patient = np.repeat([f"p{i:02d}" for i in range(n_patients)], levels).astype(object)
    base = np.repeat(rng.uniform(40, 220, n_patients), levels).astype(np.float32)
    split = np.array(["test" if int(p[1:]) < test_patients else "cv" for p in patient], dtype=object)
    return Samples(images=rng.normal(size=(n, 3, size, size, size)).astype(np.float32),
                   features=rng.normal(size=(n, 11)).astype(np.float32), baseline=base,
                   target=(base + rng.normal(0, 5, n)).astype(np.float32), patient=patient,
                   level=np.tile(["L1", "L2", "L3"][:levels], n_patients).astype(object), split=split)


def test_folds_never_share_a_patient_and_are_seeded():
    s = synthetic_samples(n_patients=40, test_patients=5)
    split = patient_folds(s, 5, seed=3, target="bmd_mg_cm3")
    folds, test = split.folds, split.test
    test_p = set(s.patient[test])
    assert test_p == {f"p{i:02d}" for i in range(5)}
    seen_validation = set()
    for f in folds:
        fit, stop, val = set(s.patient[f.fit]), set(s.patient[f.stop]), set(s.patient[f.validation])
        assert fit and stop and val
        assert not fit & val and not stop & val and not fit & stop, "a patient in two parts of one fold"
        assert not (fit | stop | val) & test_p, "a test patient inside cross-validation"
        assert not val & seen_validation, "a patient validated twice"
        seen_validation |= val
        # every vertebra of a validation patient is in the validation part
        assert set(np.nonzero(np.isin(s.patient, list(val)))[0]) == set(f.validation)
    assert seen_validation == set(s.patient) - test_p
    again = patient_folds(s, 5, seed=3, target="bmd_mg_cm3").folds
    other = patient_folds(s, 5, seed=4, target="bmd_mg_cm3").folds
    assert all(np.array_equal(a.validation, b.validation) and np.array_equal(a.fit, b.fit) for a, b in zip(folds, again))
    assert not all(np.array_equal(a.validation, b.validation) for a, b in zip(folds, other))


def test_external_sites_are_in_no_training_early_stopping_or_validation_fold():
    s = synthetic_samples(n_patients=40, test_patients=4)
    site = {f"p{i:02d}": "external" for i in range(30, 35)} | {f"p{i:02d}": "external_2" for i in range(35, 40)}
    s.split = np.array([site.get(p, x) for p, x in zip(s.patient, s.split)], dtype=object)
    external = set(site)
    split = patient_folds(s, 5, seed=2, target="bmd_mg_cm3")
    folds, test = split.folds, split.test
    assert not set(s.patient[test]) & external
    for f in folds:
        for part in (f.fit, f.stop, f.validation):
            assert not set(s.patient[part]) & external, "an external patient inside cross-validation"
    cv = set(s.patient[s.split == "cv"])
    assert set().union(*(set(s.patient[f.validation]) for f in folds)) == cv


def test_too_few_patients_for_the_folds():
    with pytest.raises(ValueError, match="too few"):
        patient_folds(synthetic_samples(n_patients=7), 5, seed=0, target="bmd_mg_cm3")


def test_same_seed_same_first_epoch_loss():
    s = synthetic_samples(n_patients=12)
    folds = patient_folds(s, 2, seed=0, target="bmd_mg_cm3").folds
    cfg = TrainConfig(arch="densenet_small", epochs=1, batch_size=8, seed=5, device="cpu")
    runs = [train_member(s, folds[0].fit, folds[0].stop, cfg, "bmd_mg_cm3").history[0] for _ in range(2)]
    other = train_member(s, folds[0].fit, folds[0].stop, TrainConfig(**{**cfg.__dict__, "seed": 6}), "bmd_mg_cm3").history[0]
    assert runs[0]["train_loss"] == runs[1]["train_loss"] and runs[0]["stop_loss"] == runs[1]["stop_loss"]
    assert other["train_loss"] != runs[0]["train_loss"]


def test_crops_of_the_real_example_are_centred_on_the_trabecular_roi():
    from ctbmd.model.crops import extract_crops
    from ctbmd.pipeline import analyse

    res = analyse(EXAMPLE / "ct.nii.gz")
    crops = extract_crops(res.ct, res.roi_labels, res.levels, res.calibration, res.phase).crops
    by = {c.level: c for c in crops}
    assert {"L1", "L2", "L3", "L4"} <= set(by)
    lo, hi = HU_WINDOW
    for m in res.levels:
        if m.level not in by:
            continue
        c = by[m.level]
        assert c.image.shape == (3, 32, 32, 32) and c.image.dtype == np.float32
        mask = c.image[2] > 0.5
        centre = np.argwhere(mask).mean(0)
        assert np.all(np.abs(centre - 15.5) < 2.0), (m.level, centre)
        # HU inside the resampled ROI reads the ROI stage's median (linear interpolation blurs the edge a little)
        hu = (c.image[0][mask] + 1.0) / 2.0 * (hi - lo) + lo
        assert abs(np.median(hu) - m.hu_median) < 15.0, (m.level, np.median(hu), m.hu_median)
        assert c.bmd_calibrated_mg_cm3 == pytest.approx(res.calibration.to_mg_cm3(m.hu_median))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Four small phantoms, a manifest, and a 1-epoch 2-fold densenet_small model (through the CLI)."""
    root = tmp_path_factory.mktemp("dl")
    rows = []
    for i, (l1, kvp, phase) in enumerate([(60, 100, "native"), (100, 120, "native"), (150, 80, "arterial"),
                                          (200, 140, "native")]):
        d = root / f"q{i}"
        rc, so, se = run_cli("simulate", "--out", d, "--bmd", f"L1={l1}", "--kvp", kvp, "--phase", phase, "--pixel",
                             "2", "--slice", "3", "--seed", i + 30)
        assert rc == 0, se
        truth = json.loads((d / "truth.json").read_text())
        rows += [[f"q{i}", f"q{i}/ct.nii.gz", f"q{i}/labels.nii.gz", "verse", lv["level"],
                  lv["qct_equivalent_mg_cm3"]] for lv in truth["levels"] if lv["level"] in ("L1", "L2", "L3", "L4")]
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "ct", "labels", "label_map", "level", "bmd_mg_cm3"])
        w.writerows(rows)
    cache = root / "cache"
    rc, so, se = run_cli("train", "--manifest", root / "manifest.csv", "--out", root / "model", "--arch",
                         "densenet_small", "--folds", "2", "--epochs", "1", "--cache", cache, "--seed", "1")
    assert rc == 0, se
    return root


def _train_tiny(tiny_model, tmp_path, *args, manifest=None, out="model"):
    """``ctbmd train`` of a 1-epoch 2-fold densenet_small on the tiny cohort (its crops from a copy of its
    cache in ``tmp_path``); ``args`` add or override options. Returns (exit code, stdout, stderr)."""
    if not (tmp_path / "cache").exists():
        shutil.copytree(tiny_model / "cache", tmp_path / "cache")
    return run_cli("train", "--manifest", manifest or tiny_model / "manifest.csv", "--out", tmp_path / out,
                   "--arch", "densenet_small", "--folds", "2", "--epochs", "1", "--cache", tmp_path / "cache",
                   "--seed", "1", *args)


def _apply_to_q1(tiny_model, tmp_path):
    """``ctbmd run --model tmp_path/model`` on the tiny cohort's phantom q1 (its labels); returns result.json."""
    rc, so, se = run_cli("run", tiny_model / "q1" / "ct.nii.gz", "--out", tmp_path / "run", "--labels",
                         tiny_model / "q1" / "labels.nii.gz", "--label-map", "verse", "--model", tmp_path / "model",
                         "--quiet")
    assert rc == 0, se
    return json.loads((tmp_path / "run" / "result.json").read_text())


def test_train_writes_a_self_contained_model(tiny_model):
    model = tiny_model / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["training"]["phantom_trained"] is True
    assert cfg["training"]["clinically_validated"] is False
    assert cfg["training"]["n_patients"] == 4 and cfg["training"]["n_vertebrae"] == 16
    assert [m["weights"] for m in cfg["members"]] == ["member_0.pt", "member_1.pt"]
    assert len(list((tiny_model / "cache").glob("*.npz"))) == 4
    with open(model / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    assert len(oof) == 16
    folds = {}
    for r in oof:
        folds.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds.values()), "a patient's vertebrae in two folds"
    assert {r["set"] for r in oof} == {"out-of-fold"}
    for name in ("model", "calibration"):
        m = json.loads((model / "evaluation" / name / "metrics.json").read_text())
        assert m["splits"]["all"]["level"]["n"] == 16
    assert not (model / "checkpoints").exists()


def test_an_external_site_is_predicted_by_the_ensemble_and_evaluated_on_its_own(tiny_model, tmp_path):
    root = tiny_model  # read only: the manifests, the fifth phantom and the cache copy live in tmp_path
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] + ["split"]
    base = [[r[0], str(root / r[1]), str(root / r[2])] + r[3:] + ["cv"] for r in rows[1:]]
    # an external site whose only scan fails (3 slices): one line, exit 3, nothing written
    bad = tmp_path / "manifest_external_bad.csv"
    with open(bad, "w", newline="") as fh:
        csv.writer(fh).writerows([header] + base + [["x0", str(DATA / "dcmqi_ct3slice" / "dicom"), "", "", "L1", "100",
                                                     "external"]])
    rc, so, se = _train_tiny(tiny_model, tmp_path, manifest=bad, out="bad")
    assert rc == 3 and "external site 'external' has no patient with a usable vertebra" in se, se
    assert len(se.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    # a fifth phantom as the external site
    rc, so, se = run_cli("simulate", "--out", tmp_path / "q9", "--bmd", "L1=120", "--kvp", "120", "--pixel", "2",
                         "--slice", "3", "--seed", 39)
    assert rc == 0, se
    truth = json.loads((tmp_path / "q9" / "truth.json").read_text())
    ext = [["q9", "q9/ct.nii.gz", "q9/labels.nii.gz", "verse", lv["level"], lv["qct_equivalent_mg_cm3"], "external"]
           for lv in truth["levels"] if lv["level"] in ("L1", "L2", "L3", "L4")]
    good = tmp_path / "manifest_external.csv"
    with open(good, "w", newline="") as fh:
        csv.writer(fh).writerows([header] + base + ext)
    rc, so, se = _train_tiny(tiny_model, tmp_path, manifest=good)
    assert rc == 0, se
    model = tmp_path / "model"
    with open(model / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    external = [r for r in oof if r["patient_id"] == "q9"]
    assert len(external) == 4 and {(r["set"], r["fold"]) for r in external} == {("external", "-1")}
    assert {r["set"] for r in oof if r["patient_id"] != "q9"} == {"out-of-fold"}
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["training"]["n_external_patients"] == {"external": 1} and cfg["training"]["n_patients"] == 5
    site = json.loads((model / "evaluation" / "external" / "metrics.json").read_text())
    assert site["splits"]["all"]["level"]["n"] == 4
    whole = json.loads((model / "evaluation" / "model" / "metrics.json").read_text())
    assert whole["splits"]["external"]["level"]["n"] == 4 and whole["splits"]["out-of-fold"]["level"]["n"] == 16



def test_figures_of_a_one_patient_set_are_null_with_a_reason_not_nan(tiny_model, tmp_path):
    """A test set of one patient has no patient r² and no AUC: config.json holds null and the reason from
    ``ctbmd evaluate`` (valid JSON, never NaN), and the summary says ``not computed (...)``, never ``nan``."""
    from ctbmd.model.evaluation import out_of_fold_lines

    with open(tiny_model / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    body = [[r[0], str(tiny_model / r[1]), str(tiny_model / r[2])] + r[3:] + ["cv"] for r in rows[1:]]
    # q0's scan once more, as a fifth patient held out as the test set (its crops come from the cache)
    held = [["t0"] + r[1:-1] + ["test"] for r in body if r[0] == "q0"]
    manifest = tmp_path / "manifest_test.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0] + ["split"]] + body + held)
    rc, so, se = _train_tiny(tiny_model, tmp_path, manifest=manifest)
    assert rc == 0, se

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))

    for path in (tmp_path / "model").rglob("*.json"):
        strict(path)
    cfg = strict(tmp_path / "model" / "config.json")
    for name in ("model", "calibration"):
        test = cfg["training"]["out_of_fold"][name]["test"]
        assert test["vertebra"]["n"] == 4 and test["vertebra"]["r2"] is not None
        assert test["patient"]["r2"] is None and test["auc_osteoporosis"] is None
        assert test["not_computed"] == {"patient.r2": "needs at least 3 patients, got 1",
                                        "auc_osteoporosis": "needs at least 2 patients, got 1"}
        assert "not_computed" not in cfg["training"]["out_of_fold"][name]["out-of-fold"]
    lines = out_of_fold_lines(cfg)
    assert not [line for line in lines if "nan" in line]
    held_lines = [line for line in lines if " test " in line]
    assert len(held_lines) == 2
    assert all(line.endswith("AUC osteoporosis not computed (needs at least 2 patients, got 1)") for line in held_lines)
    assert "nan" not in so and all(line in so for line in lines)  # what ctbmd train printed

@pytest.mark.parametrize("dims", ["sagittal", "sagittal3"])
def test_sagittal_input_trains_applies_and_shows_its_slices(tiny_model, tmp_path, dims):
    from PIL import Image

    rc, so, se = _train_tiny(tiny_model, tmp_path, "--dims", dims)
    assert rc == 0, se
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dims"] == dims
    png = Image.open(tmp_path / "model" / "input_examples.png")
    assert png.size[0] > 150 * (1 if dims == "sagittal" else 3) and png.size[1] > 4 * 150  # 4 patients, k slices
    levels = _apply_to_q1(tiny_model, tmp_path)["levels"]
    assert all(lv["bmd_dl_mg_cm3"] is not None for lv in levels if lv["level"] in ("L1", "L2", "L3", "L4"))


def test_a_tbs_target_trains_reports_r_and_is_applied_without_a_category(tiny_model, tmp_path):
    """Seed 002 regressed DXA BMD and TBS and reported r: any numeric per-patient column is a target."""
    with open(tiny_model / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    # one TBS per patient, higher with more bone (about 1.0-1.4); the rows keep their level and bmd_mg_cm3
    mean = {}
    for r in rows[1:]:
        mean.setdefault(r[0], []).append(float(r[5]))
    tbs = {p: round(1.0 + np.mean(v) / 500, 3) for p, v in mean.items()}
    manifest = tmp_path / "manifest_tbs.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0] + ["tbs"]] + [[r[0], str(tiny_model / r[1]), str(tiny_model / r[2])] + r[3:]
                                                         + [tbs[r[0]]] for r in rows[1:]])
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--target", "tbs", manifest=manifest)
    assert rc == 0, se
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["target"] == "tbs" and cfg["target_units"] == "as the manifest's 'tbs' column"
    metrics = json.loads((tmp_path / "model" / "evaluation" / "metrics.json").read_text())["out-of-fold"]
    assert metrics["n_patients"] == 4 and metrics["r"] is not None and -1 <= metrics["r"] <= 1
    assert metrics["auc_osteoporosis"] is None and "r " in so
    with open(tmp_path / "model" / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    assert {float(r["reference_tbs"]) for r in oof} == set(tbs.values())
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--target", "tbs", "--classify", manifest=manifest, out="m2")
    assert rc == 2 and "--classify needs categories" in se and not (tmp_path / "m2").exists()
    result = _apply_to_q1(tiny_model, tmp_path)
    assert result["patient"]["tbs_dl"] is not None and result["patient"]["category_dl"] is None
    assert result["patient"]["category"] is not None  # the calibrated ACR category is untouched
    assert "tbs_dl" in (tmp_path / "run" / "levels.csv").read_text().splitlines()[0]
    from ctbmd.batch.tables import scan_rows  # ctbmd batch --model: the cohort table carries any target's value

    rows = scan_rows("q1", result)
    patient = next(r for r in rows if r["row"] == "patient")
    assert (patient["model_target"], patient["model_value"]) == ("tbs", result["patient"]["tbs_dl"])
    l2 = [r for r in rows if r["level"] == "L2"]
    assert patient["bmd_dl_mg_cm3"] is None and len(l2) == 1 and l2[0]["model_value"] is not None


def test_offline_copies_are_fixed_per_crop_and_copy_and_train(tiny_model, tmp_path):
    from ctbmd.model.train import augmented_copy

    im = np.random.default_rng(0).normal(size=(3, 16, 16, 16)).astype(np.float32)
    a, b, c = augmented_copy(im, 0, 3, 1), augmented_copy(im, 0, 3, 1), augmented_copy(im, 0, 3, 2)
    assert a.shape == im.shape and np.array_equal(a, b)  # the same copy in every epoch
    assert not np.array_equal(a, c) and not np.array_equal(a, im)
    assert not np.array_equal(augmented_copy(im, 1, 3, 1), a)  # the seed enters
    flat = augmented_copy(im, 0, 3, 1, "2d")  # axial mode: only the plane the network reads is transformed
    assert np.array_equal(flat, augmented_copy(im, 0, 3, 1, "2d")) and not np.array_equal(flat[..., 8], im[..., 8])
    assert np.array_equal(np.delete(flat, 8, axis=-1), np.delete(im, 8, axis=-1))
    five = augmented_copy(im, 0, 3, 1, "2.5d")  # 2.5d: the 5 central planes, each moved
    assert np.array_equal(five[..., :6], im[..., :6]) and np.array_equal(five[..., 11:], im[..., 11:])
    assert all(not np.array_equal(five[..., k], im[..., k]) for k in range(6, 11))
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--augment-copies", "2")
    assert rc == 0, se
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["training"]["config"]["augment_copies"] == 2
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--augment-copies", "-1", out="m2")
    assert rc == 2 and "--augment-copies" in se and not (tmp_path / "m2").exists()


def test_a_protocol_sets_its_layout_and_takes_overrides(tiny_model, tmp_path):
    shutil.copytree(tiny_model / "cache", tmp_path / "cache")
    common = ["--manifest", tiny_model / "manifest.csv", "--cache", tmp_path / "cache"]
    # not _train_tiny: the protocol, not an --arch option, must choose the network
    rc, so, se = run_cli("train", *common, "--out", tmp_path / "model", "--protocol", "yasaka2020", "--folds", "2",
                         "--epochs", "1", "--augment-copies", "1", "--seed", "1")
    assert rc == 0, se
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    t = cfg["training"]["config"]
    assert (cfg["dims"], cfg["arch"], t["protocol"]) == ("2d", "densenet_small", "yasaka2020")  # the preset
    assert (t["folds"], t["epochs"], t["augment_copies"]) == (2, 1, 1)  # options beside it override it
    assert t["augment"] is False  # Yasaka used the offline expansion alone
    assert cfg["protocol"]["published"]["r_internal"] == 0.852 and cfg["protocol"]["fixed"] == {"dims": "2d"}
    assert _apply_to_q1(tiny_model, tmp_path)["patient"]["bmd_dl_mg_cm3"]
    for args, message in ((["--protocol", "jcat2023", "--dims", "3d"], "protocol jcat2023 cannot take --dims 3d"),
                          (["--protocol", "huang2025", "--dims", "sagittal"], "protocol huang2025 cannot take --dims")):
        rc, so, se = run_cli("train", *common, "--out", tmp_path / "bad", *args)
        assert rc == 3 and message in se and len(se.strip().splitlines()) == 1, se
        assert not (tmp_path / "bad").exists()


def test_muscle_crop_of_the_real_example_holds_the_paraspinal_muscle():
    """The --muscle input on the real abdomen CT: muscle-density tissue behind and beside each body, no bone,
    no table, nothing in front of the body (the bowel and aorta)."""
    from ctbmd.model.crops import MUSCLE_HU_WINDOW, MUSCLE_POSTERIOR_MM, MUSCLE_SPACING_MM, extract_crops
    from ctbmd.pipeline import analyse

    res = analyse(EXAMPLE / "ct.nii.gz")
    crops = extract_crops(res.ct, res.roi_labels, res.levels, res.calibration, res.phase,
                          vertebra_labels=res.seg.labels).crops
    lo, hi = MUSCLE_HU_WINDOW
    p_mm = (np.arange(64) - 31.5) * MUSCLE_SPACING_MM + MUSCLE_POSTERIOR_MM
    for c in crops:
        assert c.muscle.shape == (2, 64, 64) and c.muscle.dtype == np.float32
        mask = c.muscle[1] > 0.5
        hu = (c.muscle[0] + 1.0) / 2.0 * (hi - lo) + lo
        assert 0.15 < mask.mean() < 0.5, (c.level, mask.mean())
        assert 0 < np.median(hu[mask]) < 60, (c.level, np.median(hu[mask]))  # skeletal muscle, not fat or bone
        assert mask[:, p_mm < -25].sum() == 0 and mask[:, p_mm > 40].sum() > 0.5 * mask.sum(), c.level
        behind = mask[:, p_mm > 40]  # behind the arch: the erector spinae on both sides of the midline
        assert behind[:32].mean() > 0.2 and behind[32:].mean() > 0.2, c.level


def test_muscle_mask_leaves_out_a_low_density_vertebral_body(tiny_model):
    """q0's L1 (60 mg/cm³ K2HPO4) reads like muscle; the vertebra labels keep it, and its canal, out of the mask."""
    from ctbmd.model.crops import extract_crops
    from ctbmd.pipeline import analyse

    q0 = tiny_model / "q0"
    res = analyse(q0 / "ct.nii.gz", segmenter="labels", labels=q0 / "labels.nii.gz", label_map="verse")
    args = (res.ct, res.roi_labels, res.levels, res.calibration, res.phase)
    with_labels = {c.level: c.muscle for c in extract_crops(*args, vertebra_labels=res.seg.labels).crops}
    without = {c.level: c.muscle for c in extract_crops(*args).crops}
    body = np.s_[25:39, 16:28]  # within the body: L -16..+16 mm, P -14..+14 mm of its centre
    for level in ("L1", "L2"):
        assert without[level][1][body].sum() > 40, level  # the body itself passes the HU range
        assert with_labels[level][1][body].sum() < 0.1 * without[level][1][body].sum(), level


def test_huang_protocol_trains_on_body_and_muscle_and_applies(tiny_model, tmp_path):
    """Huang 2025: axial body + muscle crop, osteoporosis (QCT < 80 mg/cm³) against the rest; the PNG shows
    the muscle crop; `ctbmd run --model` reads it too."""
    from PIL import Image

    rc, so, se = _train_tiny(tiny_model, tmp_path, "--protocol", "huang2025")
    assert rc == 0, se
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (cfg["dims"], cfg["muscle"], cfg["task"], cfg["binary_threshold"]) == ("2d", True, "binary", 80.0)
    assert cfg["preprocessing"]["muscle_crop"]["size"] == 64 and cfg["arch"] == "densenet_small"
    weights = __import__("torch").load(tmp_path / "model" / "member_0.pt", weights_only=True)
    assert any(k.startswith("muscle_backbone.") for k in weights)
    m = json.loads((tmp_path / "model" / "evaluation" / "metrics.json").read_text())["out-of-fold"]
    assert m["threshold"] == 80.0 and m["patient"]["n_low"] == 2  # QCT-equivalent means: q0 40, q1 76 | q2 134, q3 179
    png = Image.open(tmp_path / "model" / "input_examples.png")
    assert png.size[0] > 3 * 150  # axial slice, muscle HU, muscle mask
    p = _apply_to_q1(tiny_model, tmp_path)["patient"]
    assert 0.0 <= p["p_low_bmd_dl"] <= 1.0 and "below 80" in p["category_dl_system"]
    assert "P(low BMD: bmd_mg_cm3 &lt; 80)" in (tmp_path / "run" / "report.html").read_text()  # osteoporosis, named
    # a --muscle model whose crop settings differ from this version's is refused, not misread
    cfg["preprocessing"]["muscle_crop"]["spacing_mm"] = 3.0
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    rc, so, se = run_cli("run", tiny_model / "q1" / "ct.nii.gz", "--out", tmp_path / "run2", "--labels",
                         tiny_model / "q1" / "labels.nii.gz", "--label-map", "verse", "--model", tmp_path / "model")
    assert rc == 3 and "muscle crop" in se and not (tmp_path / "run2").exists(), se


def test_manifest_kvp_reaches_the_calibration_of_a_nifti(tiny_model, tmp_path):
    """A NIfTI has no kVp: the manifest's kvp column gives it, and the 80 kV phantom's calibrated baseline
    then lands near the truth (without it, 120 kV is assumed)."""
    from ctbmd.model.cohort import read_manifest, scan_crops
    from ctbmd.model.crops import CropSpec

    q2 = tiny_model / "q2"  # 80 kV, arterial
    truth = {lv["level"]: lv["qct_equivalent_mg_cm3"] for lv in json.loads((q2 / "truth.json").read_text())["levels"]}
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"patient_id,ct,labels,label_map,kvp,level,bmd_mg_cm3\nq2,{q2 / 'ct.nii.gz'},"
                        f"{q2 / 'labels.nii.gz'},verse,80,L2,{truth['L2']}\n")
    scan = read_manifest(manifest).scans[0]
    assert scan.kvp == 80.0

    def error(s):
        crops = scan_crops(s, CropSpec(), None).crops
        return np.mean([abs(c.bmd_calibrated_mg_cm3 - truth[c.level]) for c in crops if c.level in ("L1", "L2", "L3")])

    with_kvp, without = error(scan), error(replace(scan, kvp=None))  # measured 15.7 and 79.2 mg/cm³
    # what is left with the kVp is mostly the arterial iodine in the marrow, which the calibration does not remove
    assert with_kvp < 25.0 and with_kvp < without / 3, (with_kvp, without)


def test_binary_thresholds_by_protocol_and_target():
    from ctbmd.model.train import binary_threshold

    huang = TrainConfig(task="binary", protocol="huang2025")
    assert binary_threshold(huang, "t_score") == -2.45 and binary_threshold(huang, "bmd_mg_cm3") == 80.0
    plain = TrainConfig(task="binary")
    assert binary_threshold(plain, "t_score") == -1.0 and binary_threshold(plain, "bmd_mg_cm3") == 120.0
    assert binary_threshold(TrainConfig(task="binary", protocol="huang2025", threshold=-2.0), "t_score") == -2.0
    with pytest.raises(ValueError, match="needs threshold") as info:
        binary_threshold(huang, "tbs")
    assert "needs --threshold" in info.value.one_line("cli")  # the CLI writes the parameter as its flag


def test_binary_agreement_of_known_predictions():
    from ctbmd.evaluate import binary_agreement

    low = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.3, 0.7, 0.1, 0.05])  # TP TP TN TN FN FP TN TN at 0.5
    m = binary_agreement(low, p, np.arange(8), n_boot=300, seed=1)
    assert (m["n"], m["n_low"]) == (8, 3)
    assert m["recall"]["value"] == pytest.approx(2 / 3) and m["precision"]["value"] == pytest.approx(2 / 3)
    assert m["specificity"]["value"] == pytest.approx(4 / 5) and m["accuracy"]["value"] == pytest.approx(6 / 8)
    assert m["f1"]["value"] == pytest.approx(2 / 3)
    assert m["auc"]["value"] == pytest.approx(12 / 15)  # 12 of the 15 (low, normal) pairs ordered right
    lo, hi = m["auc"]["ci95"]
    assert lo < 12 / 15 < hi <= 1.0


def test_binary_task_reports_peng_figures_and_applies_a_probability(tiny_model, tmp_path):
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--epochs", "2", "--task", "binary")
    assert rc == 0, se
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (cfg["task"], cfg["binary_threshold"]) == ("binary", 120.0)
    m = json.loads((tmp_path / "model" / "evaluation" / "metrics.json").read_text())["out-of-fold"]
    assert m["threshold"] == 120.0 and m["patient"]["n"] == 4 and m["patient"]["n_low"] == 2  # L1 60, 100 | 150, 200
    for unit in ("vertebra", "patient"):
        for key in ("auc", "f1", "recall", "precision", "specificity", "accuracy"):
            assert set(m[unit][key]) == {"value", "ci95"}, (unit, key)
    assert m["vertebra"]["auc"]["value"] is not None and "auc" in so and "specificity" in so
    with open(tmp_path / "model" / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    assert all(0.0 <= float(r["p_low_bmd"]) <= 1.0 for r in oof)
    rc, so, se = _train_tiny(tiny_model, tmp_path, "--task", "binary", "--classify", out="m2")
    assert rc == 2 and "cannot take --classify" in se
    result = _apply_to_q1(tiny_model, tmp_path)
    p = result["patient"]
    assert 0.0 <= p["p_low_bmd_dl"] <= 1.0 and p["category_dl"] in ("low BMD", "normal")
    from ctbmd.batch.tables import scan_rows

    patient = next(r for r in scan_rows("q1", result) if r["row"] == "patient")
    assert (patient["model_target"], patient["model_value"]) == ("p_low_bmd", p["p_low_bmd_dl"])
    assert "P(low BMD: bmd_mg_cm3 &lt; 120)" in (tmp_path / "run" / "report.html").read_text()


def test_model_reloads_without_caches_and_runs_on_the_real_example(tiny_model, tmp_path):
    moved = tmp_path / "shipped_model"
    shutil.copytree(tiny_model / "model", moved)
    shutil.rmtree(tiny_model / "cache")
    from ctbmd.model.store import load_model

    model = load_model(moved)
    assert len(model.members) == 2 and model.target == "bmd_mg_cm3"
    out = tmp_path / "run"
    rc, so, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", out, "--model", moved, "--quiet")
    assert rc == 0, se
    assert "model (trained on simulated phantoms)" in so
    res = json.loads((out / "result.json").read_text())
    by = {lv["level"]: lv for lv in res["levels"]}
    for level in ("L1", "L2", "L3", "L4"):
        assert np.isfinite(by[level]["bmd_dl_mg_cm3"]), level
        assert by[level]["bmd_mg_cm3"] is not None
    assert res["model"]["phantom_trained"] is True and res["model"]["clinically_validated"] is False
    assert "phantoms" in res["model"]["note"]
    assert res["patient"]["category_dl"] in ("normal", "osteopenia", "osteoporosis")
    assert "bmd_dl_mg_cm3" in (out / "levels.csv").read_text().splitlines()[0]
    # the Python API composes the same step after the pipeline: the same model values
    import ctbmd

    api = ctbmd.analyse(EXAMPLE / "ct.nii.gz", model=model).to_dict()
    assert [lv["bmd_dl_mg_cm3"] for lv in api["levels"]] == [lv["bmd_dl_mg_cm3"] for lv in res["levels"]]
    assert api["patient"]["category_dl"] == res["patient"]["category_dl"]


def test_train_refuses_to_overwrite_and_too_few_patients(tiny_model, tmp_path):
    rc, so, se = run_cli("train", "--manifest", tiny_model / "manifest.csv", "--out", tiny_model / "model",
                         "--arch", "densenet_small", "--no-cache")
    assert rc == 2 and "already holds a trained model" in se and "Traceback" not in se
    rc, so, se = run_cli("train", "--manifest", tiny_model / "manifest.csv", "--out", tmp_path / "m", "--folds", "5",
                         "--arch", "densenet_small", "--cache", tiny_model / "cache")
    assert rc == 2 and "too few" in se and "Traceback" not in se


@pytest.mark.parametrize("content, message", [
    ("patient_id,level,bmd_mg_cm3\na,L1,100\n", "missing column 'ct'"),
    ("patient_id,ct,level,bmd_mg_cm3\na,nowhere.nii.gz,L1,100\n", "does not exist"),
    ("patient_id,ct,level,bmd_mg_cm3\na,{ct},L9,100\n", "unknown level"),
    ("patient_id,ct,category\na,{ct},osteoporosis\n", "needs a 't_score'"),
    ("patient_id,ct,labels,label_map,level,bmd_mg_cm3\na,{ct},{ct},weird,L1,100\n", "label_map"),
    ("patient_id,ct,level,bmd_mg_cm3,split\na,{ct},L1,100,holdout\n", "split 'holdout' is not"),
    ("patient_id,ct,tbs\na,{ct},high\n", "tbs 'high' is not a number"),
    ("patient_id,ct,level,bmd_mg_cm3,split\na,{ct},L1,100,cv\nb,{ct2},L1,90,external_3\n",
     "external site 'external' has no patients, but 'external_3' has"),
    ("patient_id,ct,kvp,level,bmd_mg_cm3\na,{ct},300,L1,100\n", "kvp '300' is not a tube voltage"),
])
def test_bad_manifest_is_one_line_exit_3(tmp_path, content, message):
    m = tmp_path / "manifest.csv"
    m.write_text(content.format(ct=EXAMPLE / "ct.nii.gz", ct2=DATA / "tptbox_l3_crop" / "ct.nii.gz"))
    target = ["--target", "tbs"] if "tbs" in content else []
    rc, so, se = run_cli("train", "--manifest", m, "--out", tmp_path / "model", "--no-cache", *target)
    assert rc == 3, se
    assert message in se and str(m) in se and "Traceback" not in se
    assert not (tmp_path / "model").exists()


def test_run_with_a_folder_that_is_not_a_model(tmp_path):
    rc, so, se = run_cli("run", EXAMPLE / "ct.nii.gz", "--out", tmp_path / "o", "--model", tmp_path)
    assert rc == 2 and "no config.json" in se and "Traceback" not in se
    assert not (tmp_path / "o").exists()


def test_resumed_training_continues_exactly(tmp_path):
    s = synthetic_samples(n_patients=12)
    folds = patient_folds(s, 2, seed=0, target="bmd_mg_cm3").folds
    cfg = TrainConfig(arch="densenet_small", epochs=2, batch_size=8, seed=2, device="cpu", patience=5)
    straight = train_member(s, folds[0].fit, folds[0].stop, cfg, "bmd_mg_cm3", checkpoint=tmp_path / "a.pt").history
    # "interrupted" after one epoch, then resumed from the checkpoint
    first = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    train_member(s, folds[0].fit, folds[0].stop, first, "bmd_mg_cm3", checkpoint=tmp_path / "b.pt")
    resumed = train_member(s, folds[0].fit, folds[0].stop, cfg, "bmd_mg_cm3", checkpoint=tmp_path / "b.pt").history
    assert [h["epoch"] for h in resumed] == [0, 1]
    assert resumed[1]["train_loss"] == pytest.approx(straight[1]["train_loss"], rel=1e-5)
    assert resumed[1]["stop_loss"] == pytest.approx(straight[1]["stop_loss"], rel=1e-5)
    # resuming with settings that change the model (here the seed) is refused, not silently mixed
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        train_member(s, folds[0].fit, folds[0].stop, TrainConfig(**{**cfg.__dict__, "seed": 3}), "bmd_mg_cm3",
                     checkpoint=tmp_path / "b.pt")
