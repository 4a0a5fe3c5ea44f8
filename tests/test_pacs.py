"""`ctbmd pacs` against a real Orthanc (Debian package) on loopback: the LIDC series is uploaded, pulled,
analysed and the SEG, SR and SC pushed back into its study; the bad cases (Orthanc down, a wrong UID, a
series that is not CT, a user without the right to store) each give one line, their own exit code and
push nothing. The server is started and stopped inside this module, and no process is left behind."""

import io
import json
import os
import subprocess
import sys

import pydicom
import pytest
import requests

from conftest import DATA, need_tool
from orthanc_server import PASSWORD, free_port, get, orthanc, upload

from ctbmd.errors import EXIT_INVALID_INPUT, EXIT_PACS_NOT_FOUND, EXIT_PACS_REFUSED, EXIT_PACS_UNREACHABLE

LIDC = DATA / "lidc_idri_0001_chest" / "dicom"
LIDC_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def _pacs(*args, user="admin"):
    env = dict(os.environ, CTBMD_PACS_PASSWORD=PASSWORD)
    cmd = [sys.executable, "-c", "from ctbmd.cli import main; main()", "pacs", *map(str, args), "--quiet"]
    if user:
        cmd += ["--user", user]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A running Orthanc holding the LIDC series and one MR instance: (url, process, MR series UID)."""
    need_tool("Orthanc")
    workdir = tmp_path_factory.mktemp("orthanc")
    with orthanc(workdir) as (url, proc):
        upload(url, sorted(LIDC.glob("*.dcm")))
        mr = requests.post(url + "/tools/create-dicom", auth=("admin", PASSWORD), timeout=30,
                           json={"Tags": {"Modality": "MR", "PatientID": "MR-TEST", "SeriesDescription": "not CT"}})
        mr.raise_for_status()
        mr_series = get(url, f"/instances/{mr.json()['ID']}/simplified-tags")["SeriesInstanceUID"]
        yield url, proc, mr_series
    assert proc.poll() is not None  # stopped
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"Orthanc processes left: {leftover}"


def _instances(url):
    return sorted(get(url, "/instances"))


def test_round_trip_pushes_seg_sr_and_sc_into_the_source_study(server, tmp_path):
    url, _, _ = server
    before = _instances(url)
    rc, so, se = _pacs("--url", url, "--series", LIDC_SERIES, "--out", tmp_path / "out", "--push")
    assert rc == 0, se
    assert "pushed" in so and "3 objects" in so
    study_id = get(url, "/studies")
    assert len(study_id) == 2  # the LIDC study and the MR one: nothing new
    lidc_study = next(s for s in study_id if LIDC_SERIES in [get(url, f"/series/{x}")["MainDicomTags"].get(
        "SeriesInstanceUID") for x in get(url, f"/studies/{s}")["Series"]])
    series = {get(url, f"/series/{s}")["MainDicomTags"]["Modality"]: s
              for s in get(url, f"/studies/{lidc_study}")["Series"]}
    assert sorted(series) == ["CT", "OT", "SEG", "SR"]
    assert len(_instances(url)) == len(before) + 3

    def read_back(modality):
        inst = get(url, f"/series/{series[modality]}")["Instances"][0]
        data = requests.get(f"{url}/instances/{inst}/file", auth=("admin", PASSWORD), timeout=30).content
        return pydicom.dcmread(io.BytesIO(data))

    seg, sr, sc = read_back("SEG"), read_back("SR"), read_back("OT")
    ct_study_uid = get(url, f"/studies/{lidc_study}")["MainDicomTags"]["StudyInstanceUID"]
    for ds in (seg, sr, sc):
        assert ds.StudyInstanceUID == ct_study_uid and ds.PatientID == "LIDC-IDRI-0001"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == LIDC_SERIES
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 133
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert {LIDC_SERIES, seg.SeriesInstanceUID} <= evidence
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    # the pushed objects are the files written locally
    local = pydicom.dcmread(tmp_path / "out" / "bmd_sr.dcm", stop_before_pixels=True)
    assert local.SOPInstanceUID == sr.SOPInstanceUID
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["input"]["path"] == f"{url}/series/{series['CT']}"  # the PACS resource, not a temporary folder
    assert result["input"]["series_uid"] == LIDC_SERIES and result["levels"]


@pytest.mark.parametrize("case", ["orthanc_down", "wrong_uid", "not_ct", "no_write_right", "refused_midway"])
def test_bad_cases_give_one_line_their_own_code_and_push_nothing(case, server, tmp_path):
    url, _, mr_series = server
    before = _instances(url)
    args = {"orthanc_down": (f"http://127.0.0.1:{free_port()}", LIDC_SERIES, "admin"),
            "wrong_uid": (url, "1.2.826.0.1.3680043.8.498.1", "admin"),
            "not_ct": (url, mr_series, "admin"),
            "no_write_right": (url, LIDC_SERIES, "reader"),
            "refused_midway": (url, LIDC_SERIES, "half")}[case]  # SEG stored, SR refused: the SEG is removed
    expected = {"orthanc_down": (EXIT_PACS_UNREACHABLE, "cannot reach the PACS"),
                "wrong_uid": (EXIT_PACS_NOT_FOUND, "no series with SeriesInstanceUID"),
                "not_ct": (EXIT_INVALID_INPUT, "is not CT (Modality MR)"),
                "no_write_right": (EXIT_PACS_REFUSED, "refused to store vertebrae_seg.dcm (HTTP 403"),
                "refused_midway": (EXIT_PACS_REFUSED, "refused to store bmd_sr.dcm (HTTP 403")}[case]
    rc, so, se = _pacs("--url", args[0], "--series", args[1], "--out", tmp_path / "out", "--push", user=args[2])
    lines = se.strip().splitlines()
    assert rc == expected[0], se
    assert len(lines) == 1 and lines[0].startswith("ctbmd: error: ") and expected[1] in lines[0], se
    assert "Traceback" not in se and PASSWORD not in se
    assert _instances(url) == before  # nothing pushed
    if case in ("no_write_right", "refused_midway"):
        assert "nothing was pushed" in lines[0]
        assert (tmp_path / "out" / "result.json").exists()  # the analysis is kept locally
    else:
        assert not (tmp_path / "out").exists()  # refused before any analysis


def test_push_with_deidentify_is_refused_before_contacting_the_pacs(tmp_path):
    rc, so, se = _pacs("--url", f"http://127.0.0.1:{free_port()}", "--series", LIDC_SERIES, "--out", tmp_path / "o",
                       "--push", "--deidentify")
    assert rc == 2 and "cannot be combined with --deidentify" in se


def test_push_is_refused_when_the_dicom_objects_could_not_be_made(server, tmp_path, monkeypatch):
    import ctbmd.report.dicom as dicom
    from ctbmd.errors import InvalidInputError
    from ctbmd.pacs import pull_analyse_push

    url, _, _ = server
    before = _instances(url)
    out = tmp_path / "out"
    pull_analyse_push(url, LIDC_SERIES, out, user="admin", password=PASSWORD)  # a first run, not pushed
    assert (out / "vertebrae_seg.dcm").exists()

    def broken(*args, **kwargs):
        raise ValueError("source header unusable")

    monkeypatch.setattr(dicom, "build_seg", broken)
    with pytest.raises(InvalidInputError) as err:
        pull_analyse_push(url, LIDC_SERIES, out, push=True, user="admin", password=PASSWORD)
    assert "DICOM SEG/SR/SC not written (ValueError: source header unusable)" in str(err.value)
    assert "nothing was pushed" in str(err.value)
    assert not (out / "vertebrae_seg.dcm").exists()  # the first run's objects are not left beside the new results
    assert _instances(url) == before


def test_credentials_in_the_url_are_used_and_never_shown(server, tmp_path):
    url, _, _ = server
    with_login = url.replace("http://", f"http://admin:{PASSWORD}@")
    rc, so, se = _pacs("--url", with_login, "--series", "1.2.826.0.1.3680043.8.498.2", "--out", tmp_path / "o",
                       user=None)
    assert rc == EXIT_PACS_NOT_FOUND and PASSWORD not in se and url in se
