"""DICOM SEG, SR and Secondary Capture of a real DICOM series (LIDC-IDRI-0001), checked three ways:
highdicom parses them back, pydicom reads the values, and dciodvfy (dicom3tools) finds no errors.
Also ``report.html`` rendered in headless Chromium, and ``--deidentify``."""

import json
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DATA, need_tool

LIDC = DATA / "lidc_idri_0001_chest" / "dicom"
LIDC_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
DICOM_FILES = ("vertebrae_seg.dcm", "bmd_sr.dcm", "report_sc.dcm")


@pytest.fixture(scope="module")
def lidc_out(tmp_path_factory):
    import ctbmd

    out = tmp_path_factory.mktemp("lidc") / "out"
    ctbmd.run(LIDC, out)
    return out


#: Identifying values written into a copy of the LIDC headers for the --deidentify test: names, IDs, dates,
#: free text of the Patient and Study modules, and a second series in the folder (its choice is noted).
#: Made-up tokens, so that none can occur by chance in dicognito's random pseudonyms (which draw on real
#: surnames, street and hospital names).
PHI = {"PatientName": "QXZWKV^JOHN", "PatientBirthDate": "19400202", "OtherPatientIDs": "OTHERID77",
       "StudyDescription": "KNEE OF QXZWKV", "PatientComments": "LIVES AT ZWQXV STREET",
       "AdditionalPatientHistory": "HISTORY OF QXZWKV", "InstitutionName": "ST XKQZW",
       "ReferringPhysicianName": "DR^VQZKX", "AccessionNumber": "ACC99177", "PatientAge": "084Y",
       "StudyID": "STUDY4242", "EthnicGroup": "ETHNICX", "MedicalAlerts": "ALERTQXZWKV"}


@pytest.fixture(scope="module")
def lidc_deid(tmp_path_factory):
    """``ctbmd.run(..., deidentify=True)`` on LIDC with :data:`PHI` in every header and a second series beside it."""
    import ctbmd

    src = tmp_path_factory.mktemp("lidc_phi") / "QXZWKV_JOHN_19400202"
    src.mkdir()
    for f in sorted(LIDC.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in PHI.items():
            setattr(ds, k, v)
        ds.save_as(src / f.name)
    for f in sorted((DATA / "dcmqi_ct3slice" / "dicom").glob("*.dcm")):  # another study: "2 series in folder"
        (src / f"other_{f.name}").write_bytes(f.read_bytes())
    out = tmp_path_factory.mktemp("lidc_deid") / "out"
    ctbmd.run(src, out, deidentify=True)
    return out, src


def source_headers():
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(LIDC.glob("*.dcm"))]
    return {h.SOPInstanceUID: h for h in heads}


def test_dicom_outputs_written_for_dicom_input_only(lidc_out, example_builtin):
    for name in DICOM_FILES + ("report.html",):
        assert (lidc_out / name).stat().st_size > 1000, name
    assert (example_builtin / "report.html").exists()
    assert not any((example_builtin / name).exists() for name in DICOM_FILES)  # NIfTI input: no DICOM objects


def test_seg_matches_label_maps_voxel_for_voxel(lidc_out):
    import highdicom as hd

    seg = hd.seg.segread(lidc_out / "vertebrae_seg.dcm")
    heads = source_headers()
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == LIDC_SERIES
    assert seg.FrameOfReferenceUID == next(iter(heads.values())).FrameOfReferenceUID
    assert seg.StudyInstanceUID == next(iter(heads.values())).StudyInstanceUID
    assert seg.PatientID == "LIDC-IDRI-0001"
    result = json.loads((lidc_out / "result.json").read_text())
    vert = sitk.ReadImage(str(lidc_out / "vertebrae.nii.gz"))
    roi = sitk.ReadImage(str(lidc_out / "roi.nii.gz"))
    # the NIfTI maps lie on the input grid: slice k is the k-th source slice along the slice normal
    order = sorted(heads, key=lambda u: float(heads[u].ImagePositionPatient[2]))
    assert np.allclose(vert.GetOrigin(), [float(v) for v in heads[order[0]].ImagePositionPatient], atol=1e-3)
    vert_zyx, roi_zyx = sitk.GetArrayFromImage(vert), sitk.GetArrayFromImage(roi)
    labels = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    named = result["segmentation"]["levels_in_label_map"]
    measured = [lv["level"] for lv in result["levels"]]
    assert sorted(labels.values()) == sorted(named + [f"{lv} trabecular ROI" for lv in measured])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, segment_numbers=sorted(labels))
    assert pixels.shape == vert_zyx.shape + (len(labels),)
    from ctbmd.types import VERSE_LABELS

    for i, number in enumerate(sorted(labels)):
        name = labels[number]
        level = name.split()[0]
        truth = (roi_zyx if name.endswith("ROI") else vert_zyx) == VERSE_LABELS[level]
        assert truth.sum() > 100, name
        assert np.array_equal(pixels[..., i].astype(bool), truth), name
    codes = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0] for d in seg.SegmentSequence}
    assert (codes["L1"].CodeValue, codes["L1"].CodingSchemeDesignator) == ("66794005", "SCT")  # L1 vertebra
    assert (codes["T12"].CodeValue, codes["T1"].CodeValue) == ("23215003", "64864005")
    roi_item = next(d for d in seg.SegmentSequence if d.SegmentLabel == "L1 trabecular ROI")
    assert roi_item.AnatomicRegionSequence[0].CodeValue == "66794005"


def test_sr_values_equal_result_json(lidc_out):
    import highdicom as hd

    result = json.loads((lidc_out / "result.json").read_text())
    sr = hd.sr.srread(lidc_out / "bmd_sr.dcm")
    seg = pydicom.dcmread(lidc_out / "vertebrae_seg.dcm", stop_before_pixels=True)
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    numbers = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert sorted(groups) == sorted(f"{lv['level']} trabecular ROI" for lv in result["levels"])
    for lv in result["levels"]:
        g = groups[f"{lv['level']} trabecular ROI"]
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [numbers[f"{lv['level']} trabecular ROI"]]
        values = {(m.name.meaning.split(" (")[0], m.derivation.meaning if m.derivation else None): m.value
                  for m in g.get_measurements()}
        assert values[("Trabecular bone mineral density", "Mean")] == lv["bmd_mg_cm3"]
        assert values[("Attenuation Coefficient", "Mean")] == lv["trabecular_hu_mean"]
        assert values[("Attenuation Coefficient", "Median")] == lv["trabecular_hu_median"]
        low = next(m for m in g.get_measurements() if m.name.value == "BMD-CI95-LOW")
        assert [low.value, low.unit.value] == [lv["bmd_ci95_mg_cm3"][0], "mg/cm3"]
        used = {q.name.value: q.value.meaning for q in g.get_qualitative_evaluations()}
        assert used["USED-PATIENT"] == ("Yes" if lv["used_for_patient"] else "No")
    patient = sr.content.get_image_measurement_groups()
    assert len(patient) == 1
    pm = patient[0].get_measurements()[0]
    assert pm.value == result["patient"]["bmd_mg_cm3"] and pm.unit.value == "mg/cm3"
    cat = {q.name.value: q.value for q in patient[0].get_qualitative_evaluations()}
    assert cat["ACR-QCT-CAT"].value == "ACR-" + result["patient"]["category"].upper()
    assert cat["CAT-CERTAIN"].meaning == ("Yes" if result["patient"]["category_certain"] else "No")
    assert [m.value for m in patient[0].get_measurements()][1:] == result["patient"]["bmd_ci95_mg_cm3"]
    text = str(pydicom.dcmread(lidc_out / "bmd_sr.dcm"))
    assert f"ctbmd calibration: {result['calibration']['method']}" in text


def test_secondary_capture_holds_the_report_picture(lidc_out):
    from PIL import Image

    sc = pydicom.dcmread(lidc_out / "report_sc.dcm")
    png = np.asarray(Image.open(lidc_out / "report.png").convert("RGB"))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (*png.shape[:2], 3, "RGB")
    assert np.array_equal(sc.pixel_array, png)
    seg = pydicom.dcmread(lidc_out / "vertebrae_seg.dcm", stop_before_pixels=True)
    assert sc.StudyInstanceUID == seg.StudyInstanceUID and sc.PatientID == "LIDC-IDRI-0001"
    uids = {pydicom.dcmread(lidc_out / n, stop_before_pixels=True).SeriesInstanceUID for n in DICOM_FILES}
    assert len(uids) == 3 and LIDC_SERIES not in uids  # new series, new UIDs


@pytest.mark.parametrize("variant", ["lidc_out", "lidc_deid"])
def test_dciodvfy_reports_no_errors(variant, request, tmp_path):
    tool = need_tool("dciodvfy")
    out = request.getfixturevalue(variant)
    out = out[0] if isinstance(out, tuple) else out
    for name in DICOM_FILES:
        proc = subprocess.run([tool, str(out / name)], capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [ln for ln in lines if ln.startswith("Error")]
        assert not errors and proc.returncode == 0, f"{name}: {len(errors)} errors, first {errors[:3]}"
        assert any(ln.startswith("Warning") for ln in lines), name  # it checked (the source lacks Study ID)
    # dciodvfy does report errors: the same SC without its Modality
    broken = pydicom.dcmread(out / "report_sc.dcm")
    broken.Modality = ""
    broken.save_as(tmp_path / "broken.dcm")
    proc = subprocess.run([tool, str(tmp_path / "broken.dcm")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Error" in proc.stdout + proc.stderr


def test_deidentify_removes_identifiers_and_keeps_references(lidc_deid):
    lidc_deid, src = lidc_deid
    heads = list(source_headers().values())
    source = heads[0]
    seg, sr, sc = (pydicom.dcmread(lidc_deid / n) for n in DICOM_FILES)
    for ds in (seg, sr, sc):
        assert ds.PatientIdentityRemoved == "YES"
        assert {"113100", "113105", "113107"} == {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        for keyword in PHI:
            assert ds.get(keyword) in (None, "") or str(ds.get(keyword)) != PHI[keyword], keyword
        assert ds.PatientID != source.PatientID and ds.StudyInstanceUID != source.StudyInstanceUID
        assert ds.StudyInstanceUID == seg.StudyInstanceUID  # one consistent mapping
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID != LIDC_SERIES
    refs = [item.ReferencedSOPInstanceUID for item in sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[-1].ReferencedSOPSequence]
    assert seg.SOPInstanceUID in [r for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                                  for r in (i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence)], refs
    assert sc.BurnedInAnnotation == "NO"
    needles = [b"LIDC-IDRI-0001", LIDC_SERIES.encode(), src.name.encode(), b"QXZWKV", b"19400202", b"OTHERID77",
               b"ZWQXV", b"XKQZW", b"VQZKX", b"ACC99177", b"STUDY4242", b"ETHNICX", b"084Y"]
    for f in lidc_deid.iterdir():
        data = f.read_bytes()
        assert not [n for n in needles if n in data], f.name
    result = json.loads((lidc_deid / "result.json").read_text())
    assert result["input"]["deidentified"] is True and result["input"]["patient_id"] is None
    assert result["warnings"][0].startswith("2 series in folder; chose [removed]")  # the UID was in it
    assert sr.SeriesDescription.startswith("ctbmd") and seg.DeviceSerialNumber  # ctbmd's own descriptors kept


def test_report_html_renders_in_chromium(lidc_out, tmp_path):
    chromium = need_tool("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    result = json.loads((lidc_out / "result.json").read_text())
    html = (lidc_out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing loaded, no code
    messages = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: messages.append(("pageerror", str(e))))
        page.on("requestfailed", lambda r: messages.append(("requestfailed", r.url)))
        page.goto((lidc_out / "report.html").as_uri())
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        rows = page.locator("#level-table tbody tr").all_inner_texts()
        category = page.inner_text("#category")
        img_width = page.evaluate("document.querySelector('#picture img').naturalWidth")
        thresholds = page.inner_text("#patient table.thresholds")
        browser.close()
    assert [m for m in messages if m[0] in ("error", "pageerror", "requestfailed")] == []
    assert [r.split()[0] for r in rows] == [lv["level"] for lv in result["levels"]]
    l1 = next(lv for lv in result["levels"] if lv["level"] == "L1")
    assert f"{l1['bmd_mg_cm3']:.1f}" in rows[[r.split()[0] for r in rows].index("L1")]
    assert result["patient"]["category"].upper() in category and "uncertain" in category
    assert "> 120" in thresholds and "< 80" in thresholds
    assert img_width > 1000  # the inlined report.png decoded
    shot = (tmp_path / "report.png").stat().st_size
    assert shot > 200_000

