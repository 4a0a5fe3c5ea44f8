"""Issue 17, acceptance 2: 300 seeded header mutations (DICOM and NIfTI) give no internal error, no traceback
and no silently changed answer. The harness and the outcome classes are in ``fuzz_headers.py``; run
``python tests/fuzz_headers.py 300`` to print every variant's outcome."""

import sys
from pathlib import Path

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_headers import draw_variants, mutate_dicom, run_fuzz  # noqa: E402

N_VARIANTS = 300


def test_header_fuzzing_never_crashes_nor_changes_an_answer_silently(tmp_path, capfd):
    for fmt in ("dicom", "nifti"):
        rc, _, se = run_cli("simulate", "--out", tmp_path / fmt, "--pixel", "2", "--slice", "3", "--seed", "7",
                            *(["--dicom"] if fmt == "dicom" else []))
        assert rc == 0, se
    capfd.readouterr()
    counts, failures = run_fuzz(N_VARIANTS, tmp_path / "variants", tmp_path / "dicom" / "ct",
                                tmp_path / "nifti" / "ct.nii.gz")
    print(dict(counts))
    assert not failures, "\n".join(failures)
    assert sum(counts.values()) == N_VARIANTS
    tested = N_VARIANTS - counts["not_writable"]
    assert tested >= 280, counts
    # the mutations reach both sides: many are refused, many read into the very same scan
    assert counts["refused"] >= 60 and counts["same_input"] >= 60, counts
    # nothing the readers print reaches the terminal (ITK, niftilib, nibabel, pydicom go to the debug log)
    err = capfd.readouterr().err
    assert err.strip() == "", err[:2000]


def test_refused_variants_give_one_line_and_exit_3_through_the_cli(tmp_path):
    """A sample of refused DICOM variants through ``ctbmd run`` itself: one line on stderr, exit 3, no traceback,
    and no output folder."""
    rc, _, se = run_cli("simulate", "--out", tmp_path / "ph", "--pixel", "2", "--slice", "3", "--seed", "7",
                        "--dicom")
    assert rc == 0, se
    from ctbmd.errors import InvalidInputError
    from ctbmd.io import read_ct

    refused = []
    for v in (v for v in draw_variants(N_VARIANTS) if v.kind == "dicom"):
        series = tmp_path / f"v{len(refused)}"
        mutate_dicom(tmp_path / "ph" / "ct", series, v)
        try:
            read_ct(series)
        except InvalidInputError as exc:
            if v.name in exc.one_line() and v.name not in {r[0].name for r in refused}:
                refused.append((v, series))
                if len(refused) == 5:
                    break
    assert len(refused) == 5
    for i, (v, series) in enumerate(refused):
        rc, so, se = run_cli("run", series, "--out", tmp_path / f"out{i}")
        lines = [line for line in se.splitlines() if line.strip()]
        assert rc == 3 and len(lines) == 1 and "Traceback" not in se, (v.label(), rc, se)
        assert v.name in lines[0], (v.label(), lines[0])
        assert not (tmp_path / f"out{i}").exists()
