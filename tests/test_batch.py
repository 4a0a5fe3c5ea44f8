"""`ctbmd batch` (issue 14): 40 inputs (the shared real scans, 30 seeded phantoms, 6 bad inputs), every
scan in cohort.csv or failed.csv with the outcome `ctbmd run` gives it; kill -9 at 3 random moments and
resume to the same table; a Dask scheduler gives the same rows; a bug in one scan is recorded; no PHI in
the log, the progress or failed.csv."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import DATA, need_tool
from ctbmd.errors import EXIT_BATCH_FAILURES, EXIT_INTERNAL, EXIT_INVALID_INPUT, EXIT_NO_SPINE

N_PHANTOMS = 30
PATIENT_NAME, BIRTH_DATE = "DOE^JANE", "19500101"
REAL = {"ts_example_ct": DATA / "ts_example_ct" / "ct.nii.gz", "ts_example_dicom": DATA / "ts_example_dicom" / "dicom",
        "lidc": DATA / "lidc_idri_0001_chest" / "dicom", "tptbox": DATA / "tptbox_l3_crop" / "ct.nii.gz"}
#: bad input -> (exit code, words of the reason)
BAD = {"corrupt.nii.gz": (EXIT_INVALID_INPUT, "corrupt"), "mr_series": (EXIT_INVALID_INPUT, "not a CT"),
       "no_dicom": (EXIT_INVALID_INPUT, "no DICOM series"), "three_slices": (EXIT_INVALID_INPUT, "too few slices"),
       "nan.nii.gz": (EXIT_INVALID_INPUT, "NaN"), "missing.nii.gz": (EXIT_INVALID_INPUT, "no such file")}


def _phantom(args):
    from ctbmd.simulate import simulate_phantom, write_phantom

    i, spec, root = args
    write_phantom(simulate_phantom(spec), Path(root) / f"p{i:02d}", dicom=(i % 6 == 5))  # 5 of 30 as DICOM


def _batch(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-c", "from ctbmd.cli import main; main()", "batch", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The 40 inputs: {name: path}."""
    from ctbmd.simulate import cohort_specs

    root = tmp_path_factory.mktemp("batch_inputs")
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_phantom, [(i, s, str(root / "phantoms")) for i, s in enumerate(cohort_specs(N_PHANTOMS))]))
    found = dict(REAL)
    for i in range(N_PHANTOMS):
        d = root / "phantoms" / f"p{i:02d}"
        found[f"p{i:02d}"] = d / "ct" if (d / "ct").is_dir() else d / "ct.nii.gz"
    bad = root / "bad"
    bad.mkdir()
    data = (root / "phantoms" / "p00" / "ct.nii.gz").read_bytes()
    (bad / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    mr = bad / "mr_series"  # a phantom's DICOM series as an MR study, with a patient name and birth date
    mr.mkdir()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted((root / "phantoms" / "p05" / "ct").iterdir()):
        ds = pydicom.dcmread(f)
        ds.Modality, ds.PatientName, ds.PatientBirthDate = "MR", PATIENT_NAME, BIRTH_DATE
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(mr / f.name)
    (bad / "no_dicom").mkdir()
    (bad / "no_dicom" / "notes.txt").write_text("not an image\n")
    found["three_slices"] = DATA / "dcmqi_ct3slice" / "dicom"
    img = sitk.GetImageFromArray(np.full((40, 64, 64), np.nan, np.float32))
    img.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(img, str(bad / "nan.nii.gz"))
    for name in ("corrupt.nii.gz", "mr_series", "no_dicom", "nan.nii.gz", "missing.nii.gz"):
        found[name] = bad / name
    assert len(found) == 40
    return found


def _by_source(rows):
    out = {}
    for r in rows:
        out.setdefault(r["source"], []).append(r)
    return out


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory):
    """The uninterrupted batch: (out folder, stdout, stderr, seconds)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    t = time.perf_counter()
    rc, so, se = _batch(*inputs.values(), "--out", out, "--workers", "2")
    assert rc == EXIT_BATCH_FAILURES, se  # some inputs are bad: exit 6, tables written
    return out, so, se, time.perf_counter() - t


def test_every_scan_ends_in_cohort_or_failed_with_the_outcome_of_ctbmd_run(inputs, full_run, example_builtin):
    out, so, se, _ = full_run
    cohort, failed = _read_csv(out / "cohort.csv"), _read_csv(out / "failed.csv")
    done = _by_source(cohort)
    why = {r["source"]: r for r in failed}
    for name, path in inputs.items():
        src = os.path.abspath(path)
        assert (src in done) != (src in why), f"{name}: in both tables or in neither"
    # the real scans: the example and LIDC measured, the two without an anchor refused (exit 4)
    example = done[os.path.abspath(REAL["ts_example_ct"])]
    cli = json.loads((example_builtin / "result.json").read_text())
    assert [r["level"] for r in example if r["row"] == "level"] == [lv["level"] for lv in cli["levels"]]
    assert [float(r["bmd_mg_cm3"]) for r in example if r["row"] == "level"] == [lv["bmd_mg_cm3"] for lv in cli["levels"]]
    patient = [r for r in example if r["row"] == "patient"]
    assert len(patient) == 1 and patient[0]["category"] == cli["patient"]["category"]
    assert float(patient[0]["bmd_mg_cm3"]) == cli["patient"]["bmd_mg_cm3"]
    lidc = [r["level"] for r in done[os.path.abspath(REAL["lidc"])] if r["row"] == "level"]
    assert lidc == ["T11", "T12", "L1", "L2"]
    for name in ("ts_example_dicom", "tptbox"):
        assert int(why[os.path.abspath(REAL[name])]["exit_code"]) == EXIT_NO_SPINE
    # the 6 bad inputs: exit 3 with their reason
    for name, (code, words) in BAD.items():
        row = why[os.path.abspath(inputs[name])]
        assert int(row["exit_code"]) == code and words in row["reason"], row
    # the phantoms: measured, or refused by the labeller exactly as `ctbmd run` refuses them
    from ctbmd.api import analyse
    from ctbmd.errors import NoSpineError

    measured = 0
    for i in range(N_PHANTOMS):
        src = os.path.abspath(inputs[f"p{i:02d}"])
        if src in done:
            levels = [r["level"] for r in done[src] if r["row"] == "level"]
            assert levels == ["T11", "T12", "L1", "L2", "L3", "L4", "L5"], src
            measured += 1
        else:
            assert int(why[src]["exit_code"]) == EXIT_NO_SPINE and "levels cannot be named" in why[src]["reason"]
            with pytest.raises(NoSpineError) as exc:
                analyse(src)
            assert why[src]["reason"] == exc.value.one_line()
    assert measured >= 27, f"only {measured} of {N_PHANTOMS} phantoms measured"
    # one output folder per measured scan, complete, with no staging left
    scans = sorted(p.name for p in (out / "scans").iterdir())
    assert scans == sorted({r["scan_id"] for r in cohort})
    for s in scans:
        assert {"result.json", "levels.csv", "vertebrae.nii.gz", "roi.nii.gz", "report.png", "scan.json"} <= {
            p.name for p in (out / "scans" / s).iterdir()}
    assert not list((out / ".staging").iterdir()) if (out / ".staging").exists() else True
    # the parquet table holds the same rows, typed
    import pyarrow.parquet as pq

    table = pq.read_table(out / "cohort.parquet")
    assert table.num_rows == len(cohort) and str(table.schema.field("bmd_mg_cm3").type) == "double"
    assert "40 scans" in so and f"{len(failed)} failed" in so


def test_cohort_html_links_every_report_and_lists_every_failure(full_run):
    import html as html_lib
    from urllib.parse import quote, unquote

    out = full_run[0]
    page = (out / "cohort.html").read_text()
    cohort, failed = _read_csv(out / "cohort.csv"), _read_csv(out / "failed.csv")
    done = sorted({r["scan_id"] for r in cohort})
    links = re.findall(r'href="(scans/[^"]+/report\.html)"', page)
    assert sorted(links) == sorted(f"scans/{quote(i)}/report.html" for i in done)
    assert all((out / unquote(link)).is_file() for link in links)
    for f in failed:
        assert html_lib.escape(f["scan_id"]) in page and html_lib.escape(f["reason"]) in page
    patients = [r for r in cohort if r["row"] == "patient"]
    for category in ("normal", "osteopenia", "osteoporosis"):
        n = sum(r["category"] == category for r in patients)
        assert re.search(rf"<td>{category}</td><td>[^<]*</td><td>{n}</td>", page), category
    assert PATIENT_NAME not in page and BIRTH_DATE not in page
    chromium = need_tool("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    messages = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page_ = browser.new_page()
        page_.on("console", lambda m: messages.append((m.type, m.text)))
        page_.on("pageerror", lambda e: messages.append(("pageerror", str(e))))
        page_.goto((out / "cohort.html").as_uri())
        rows = page_.locator("#scan-table tr").count()
        histogram = page_.evaluate("document.querySelector('#distribution img').naturalWidth")
        browser.close()
    assert [m for m in messages if m[0] in ("error", "pageerror")] == []
    assert rows == len(done) + 1 and histogram > 300


def test_no_patient_name_or_birth_date_in_log_progress_or_failed(full_run):
    out, so, se, _ = full_run
    texts = {"batch.log": (out / "batch.log").read_text(), "failed.csv": (out / "failed.csv").read_text(),
             "stdout": so, "stderr": se}
    for where, text in texts.items():
        for term in ("DOE", "JANE", BIRTH_DATE, "1950-01-01"):
            assert term not in text.upper(), f"{term} in {where}"
    assert "mr_series" in texts["failed.csv"]  # the scan is named by its path instead


def test_scrub_removes_the_names_read_from_the_header(inputs):
    from ctbmd.batch.discover import _phi_terms, scrub

    first = sorted((inputs["mr_series"]).iterdir())[0]
    terms = _phi_terms(str(first))
    assert PATIENT_NAME in terms and BIRTH_DATE in terms
    text = scrub("reader said: patient doe^jane, Jane Doe, born 1950-01-01", terms)
    assert "jane" not in text.lower() and "doe" not in text.lower() and "1950" not in text


def test_a_rerun_skips_what_is_done(inputs, full_run, tmp_path):
    out, *_ = full_run
    before = (out / "cohort.csv").read_text()
    rc, so, se = _batch(*inputs.values(), "--out", out, "--workers", "2", "--quiet")
    assert rc == EXIT_BATCH_FAILURES, se
    n_done = len({r["scan_id"] for r in _read_csv(out / "cohort.csv")})
    assert f"{n_done} done ({n_done} from earlier runs)" in so
    assert (out / "cohort.csv").read_text() == before
    # other options are refused rather than mixed into one table
    rc, so, se = _batch(inputs["ts_example_ct"], "--out", out, "--levels", "L1-L2", "--quiet")
    assert rc == 2 and "other options levels" in se and len(se.strip().splitlines()) == 1


def test_kill_minus_9_at_three_random_moments_loses_and_duplicates_nothing(inputs, full_run, tmp_path):
    ref, _, _, seconds = full_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from ctbmd.cli import main; main()", "batch", *map(str, inputs.values()),
           "--out", str(out), "--workers", "2", "--quiet"]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    moments = []
    for _ in range(3):
        moment = rng.uniform(0.5, 0.4 * seconds)
        moments.append(round(moment, 1))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rc = subprocess.run(cmd, capture_output=True, text=True).returncode
    note = f"kill moments {moments} s (seed {seed})"
    assert rc == EXIT_BATCH_FAILURES, note
    assert (out / "cohort.csv").read_text() == (ref / "cohort.csv").read_text(), note
    assert (out / "failed.csv").read_text() == (ref / "failed.csv").read_text(), note
    cohort = _read_csv(out / "cohort.csv")
    patients = [r["scan_id"] for r in cohort if r["row"] == "patient"]
    assert len(patients) == len(set(patients)), note
    assert sorted(p.name for p in (out / "scans").iterdir()) == sorted(set(patients)), note


def test_a_dask_scheduler_gives_the_same_rows(inputs, full_run, tmp_path):
    from distributed import LocalCluster

    ref, *_ = full_run
    subset = [inputs[k] for k in ("ts_example_ct", "p00", "p05", "p11", "nan.nii.gz")]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rc, so, se = _batch(*subset, "--out", tmp_path / "sched", "--scheduler", cluster.scheduler_address)
    assert rc == EXIT_BATCH_FAILURES, se
    got = _read_csv(tmp_path / "sched" / "cohort.csv")
    ids = {r["scan_id"] for r in got}
    assert len(ids) == 4
    assert got == [r for r in _read_csv(ref / "cohort.csv") if r["scan_id"] in ids]
    rc, so, se = _batch(inputs["p00"], "--out", tmp_path / "x", "--scheduler", "tcp://127.0.0.1:9", "--quiet")
    assert rc == 2 and "cannot reach the Dask scheduler" in se and len(se.strip().splitlines()) == 1


def test_a_bug_in_one_scan_is_recorded_and_the_batch_goes_on(inputs, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    import ctbmd.api
    from ctbmd.batch import find_scans, run_batch

    real = ctbmd.api.analyse
    broken = os.path.abspath(inputs["p01"])

    def analyse(source, **kw):
        if getattr(getattr(source, "info", None), "path", None) == broken:
            raise RuntimeError("boom in one scan")
        return real(source, **kw)

    monkeypatch.setattr(ctbmd.api, "analyse", analyse)
    found = find_scans([inputs["p00"], inputs["p01"]])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = run_batch(found, tmp_path / "out", client=client)
    assert summary.done == 1 and len(summary.failed) == 1
    fail = _read_csv(tmp_path / "out" / "failed.csv")
    assert int(fail[0]["exit_code"]) == EXIT_INTERNAL and "RuntimeError: boom in one scan" in fail[0]["reason"]
    assert fail[0]["source"] == broken


def test_discovery_chooses_the_ct_series_per_study_and_names_scans_uniquely(inputs, tmp_path):
    import shutil

    from ctbmd.batch import find_scans, read_manifest, scan_id_for

    tree = tmp_path / "tree"
    shutil.copytree(inputs["p05"], tree / "patient_a" / "study" / "ct")   # a CT series ...
    shutil.copytree(inputs["mr_series"], tree / "patient_a" / "study" / "mr")  # ... beside an MR of another study
    shutil.copy(inputs["p00"], tree / "patient_b.nii.gz")
    (tree / "empty").mkdir()
    found = find_scans([tree, tree / "patient_b.nii.gz", tmp_path / "nowhere"])
    assert sorted(j.source for j in found.jobs) == [str(tree / "patient_a" / "study" / "ct"),
                                                    str(tree / "patient_b.nii.gz")]
    assert any("found twice" in n for n in found.notes)
    dicom = [j for j in found.jobs if j.series_uid][0]
    assert len(dicom.files) == len(list((tree / "patient_a" / "study" / "ct").iterdir()))
    assert {f.reason.split(": ", 1)[1] for f in found.failures} == {
        "not a CT: no series with Modality CT (found MR)", "no such file or folder"}
    assert len({j.scan_id for j in found.jobs} | {f.scan_id for f in found.failures}) == 4
    # the same file twice is one scan; two series in one folder are two scans
    assert scan_id_for(tree / "x.nii.gz") == scan_id_for(str(tree / "x.nii.gz"))
    assert scan_id_for(tree, "1.2.3") != scan_id_for(tree, "1.2.4")
    # a manifest: relative paths, per-scan kVp, bad rows refused with the row number
    (tmp_path / "m.csv").write_text("path,kvp,scan_id\ntree/patient_b.nii.gz,120,b\ntree/none.nii.gz,,c\n")
    m = read_manifest(tmp_path / "m.csv")
    assert [(j.scan_id, j.kvp) for j in m.jobs] == [("b", 120.0)] and m.failures[0].scan_id == "c"
    from ctbmd.errors import UsageError

    (tmp_path / "bad.csv").write_text("path,scan_id\na.nii.gz,x\nb.nii.gz,X\n")
    with pytest.raises(UsageError, match="rows 2 and 3"):  # one folder on a case-insensitive file system
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "comma.csv").write_text("path,kvp\n/data/Doe, John/ct.nii.gz,120\n")
    with pytest.raises(UsageError, match="row 2: more fields than columns"):
        read_manifest(tmp_path / "comma.csv")


def test_a_scan_whose_manifest_row_changed_is_redone(inputs, tmp_path):
    from distributed import Client, LocalCluster

    from ctbmd.batch import read_manifest, run_batch

    manifest = tmp_path / "m.csv"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        kvps = []
        for kvp, expect_skipped in ((120, 0), (120, 1), (100, 0)):
            manifest.write_text(f"path,kvp,scan_id\n{inputs['p00']},{kvp},p00\n")
            summary = run_batch(read_manifest(manifest), tmp_path / "out", client=client)
            assert (summary.done, summary.skipped) == (1, expect_skipped), kvp
            kvps.append(_read_csv(tmp_path / "out" / "cohort.csv")[0]["kvp"])
    assert kvps == ["120.0", "120.0", "100.0"]  # the new kVp is in the table, not the old result
