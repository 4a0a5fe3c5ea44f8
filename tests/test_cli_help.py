"""Issue 17, CLI and docs: ``--help`` of every command reads cleanly, closed sets are choices, ``--version``;
``levels.csv`` columns; ``ctbmd evaluate`` with too few patients says so instead of printing NaN.

The help and choice checks run in-process (typer's CliRunner, no subprocess); the evaluate checks run
``ctbmd`` in a subprocess, so that a warning from matplotlib or numpy would reach its stderr.
"""

import csv
import io
import json
import re
import typing

import pytest
import typer
from typer.testing import CliRunner

from conftest import run_cli
from ctbmd import __version__, cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = sorted(typer.main.get_command(cli.app).commands)


def _invoke(*args: str, width: int = 80):
    """``ctbmd ARGS`` in-process at a terminal ``width``: (exit code, stdout, stderr), colour codes removed."""
    res = CliRunner().invoke(cli.app, list(args), prog_name="ctbmd", env={"COLUMNS": str(width)})
    return res.exit_code, ANSI.sub("", res.stdout), ANSI.sub("", res.stderr)


def test_the_commands_are_those_ctbmd_help_lists():
    rc, so, _ = _invoke("--help")
    assert rc == 0
    listed = re.findall(r"^│ (\S+) ", so.split("Commands")[1], flags=re.M)
    assert sorted(listed) == COMMANDS and "run" in COMMANDS and "evaluate" in COMMANDS


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_cleanly(command):
    args = ["--help"] if command is None else [command, "--help"]
    rc, so, se = _invoke(*args)
    assert rc == 0 and not se, se
    usage = next(line for line in so.splitlines() if "Usage:" in line).strip()
    assert usage.startswith("Usage: ctbmd" + ("" if command is None else f" {command}")), usage
    assert "{" not in usage and "}" not in usage, usage
    assert "<bool>" not in so, so
    for doubled in (", ,", ",,", "| |", "; ;", "()", "[]", "''"):
        assert doubled not in so, (doubled, so)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_text_is_shown_whole(command):
    """Rich markup would drop a ``[labels]`` or ``[totalseg]`` from a help text: each one appears in full (on
    a terminal wide enough that nothing wraps)."""
    rc, so, _ = _invoke(command, "--help", width=400)
    assert rc == 0
    shown = " ".join(so.split())
    click_command = typer.main.get_command(cli.app).commands[command]
    texts = [p.help for p in click_command.params if getattr(p, "help", None)]
    texts.append(click_command.help.split("\n\n")[0])
    for text in texts:
        plain = " ".join(text.replace("\\[", "[").split())
        assert plain in shown, (plain, shown)


def test_usage_lines_name_the_arguments():
    for args, usage in ((["run"], "Usage: ctbmd run [OPTIONS] INPUT"),
                        (["batch"], "Usage: ctbmd batch [OPTIONS] [INPUTS]..."),
                        (["calibrate-scanner"], "Usage: ctbmd calibrate-scanner [OPTIONS] PHANTOM_SCAN")):
        rc, so, _ = _invoke(*args, "--help")
        assert rc == 0 and usage in so, so


def test_flags_have_no_value_placeholder():
    rc, so, _ = _invoke("simulate", "--help", width=200)
    line = next(line for line in so.splitlines() if "--no-t12-ribs" in line)
    assert re.search(r"--no-t12-ribs\s+Drop the ribs of T12", line), line


@pytest.mark.parametrize("args, option, choices", [
    (["simulate", "--out", "x", "--phase", "venous"], "--phase", ["native", "arterial", "portal_venous"]),
    (["simulate", "--out", "x", "--kvp", "90"], "--kvp", ["80", "100", "120", "140"]),
    (["run", "ct.nii.gz", "--out", "x", "--segmenter", "ts"], "--segmenter",
     ["builtin", "labels", "totalsegmentator"]),
    (["batch", "--out", "x", "--segmenter", "labels"], "--segmenter", ["builtin", "totalsegmentator"]),
    (["train", "--manifest", "m.csv", "--out", "x", "--arch", "vgg"], "--arch",
     ["densenet121", "densenet_small", "resnet18", "resnet50"]),
    (["train", "--manifest", "m.csv", "--out", "x", "--protocol", "li2023"], "--protocol",
     ["li2024", "peng2024", "jcat2023", "yasaka2020", "huang2025"]),
])
def test_a_value_outside_the_choices_is_a_usage_error(tmp_path, args, option, choices):
    rc, so, se = _invoke(*args)
    text = " ".join(se.replace("│", " ").split())
    assert rc == 2 and f"Invalid value for '{option}'" in text, se
    assert "is not one of " + ", ".join(f"'{c}'" for c in choices) in text, se
    assert not (tmp_path / "x").exists()


def test_choices_show_in_the_help():
    rc, so, _ = _invoke("simulate", "--help", width=200)
    assert "[native | arterial | portal_venous]" in so and "[80 | 100 | 120 | 140]" in so, so
    rc, so, _ = _invoke("run", "--help", width=200)
    assert "[auto | total | verse | vertebrae_pp | vertebrae_pp_refined]" in so, so


def test_the_choices_are_the_library_s():
    """The CLI repeats the library's closed sets (importing them would make --help slow); they agree."""
    from ctbmd import simulate
    from ctbmd.model.protocols import PROTOCOLS
    from ctbmd.segment import SEGMENTERS
    from ctbmd.segment.labelmaps import LABEL_MAPS

    def values(alias):
        return typing.get_args(alias)

    assert values(cli.Segmenter) == SEGMENTERS
    assert set(values(cli.BatchSegmenter)) == set(SEGMENTERS) - {"labels"}
    assert values(cli.LabelMap) == LABEL_MAPS
    assert values(cli.Phase) == simulate.PHASES
    assert values(cli.PhantomKvp) == simulate.KVP_CHOICES
    assert values(cli.TissueModel) == simulate.TISSUE_MODELS
    assert values(cli.Fov) == simulate.FOVS
    assert values(cli.RibPairs) == simulate.RIB_PAIRS
    assert values(cli.Transition) == simulate.TRANSITIONS
    assert set(values(cli.Sacrum)) == set(simulate.SACRUM_STYLES)
    assert values(cli.Protocol) == tuple(PROTOCOLS)
    pytest.importorskip("torch")
    from ctbmd.model.nets import ARCHS, DIMS
    from ctbmd.model.train import TASKS

    assert (values(cli.Arch), values(cli.Dims), values(cli.Task)) == (ARCHS, DIMS, TASKS)


def test_version_prints_the_package_version():
    rc, so, se = _invoke("--version")
    assert (rc, so.strip(), se) == (0, __version__, "")


# --------------------------------------------------------------------------- levels.csv

def _result(deidentified: bool = False) -> dict:
    """A result.json as written for two levels (only the keys levels.csv reads)."""
    level = {"trabecular_hu_median": 110.0, "trabecular_hu_mean": 111.3, "trabecular_hu_sd": 32.0,
             "bmd_mg_cm3": 82.0, "bmd_ci95_mg_cm3": [66.6, 95.8], "bmd_from_median_mg_cm3": 81.1,
             "bmd_caha_mg_cm3": 87.0, "roi_voxels": 526, "roi_volume_mm3": 14202.0, "flags": ["partial"],
             "used_for_patient": False}
    return {"input": {"path": "/data/site/P0042/ct.nii.gz", "patient_id": "P0042", "series_uid": "1.2.3",
                      "deidentified": deidentified},
            "levels": [{**level, "level": "T12", "centroid_lps_mm": [4.36, -101.38, 412.36]},
                       {**level, "level": "L1", "centroid_lps_mm": [5.1, -110.74, 381.849], "flags": [],
                        "used_for_patient": True}]}


def test_levels_csv_has_scan_patient_and_centroid_columns():
    from ctbmd.report import CSV_FIELDS, levels_csv

    text = levels_csv(_result())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_FIELDS)
    assert CSV_FIELDS[:3] == ["scan", "patient_id", "level"] and "centroid_lps_mm" not in CSV_FIELDS
    assert [(r["scan"], r["patient_id"], r["level"]) for r in rows] == [("P0042/ct.nii.gz", "P0042", "T12"),
                                                                       ("P0042/ct.nii.gz", "P0042", "L1")]
    # the centroid of result.json (LPS mm), one column per axis
    assert [(r["centroid_l_mm"], r["centroid_p_mm"], r["centroid_s_mm"]) for r in rows] == [
        ("4.4", "-101.4", "412.4"), ("5.1", "-110.7", "381.8")]
    assert (rows[0]["flags"], rows[1]["used_for_patient"], rows[0]["bmd_ci95_low_mg_cm3"]) == ("partial", "True",
                                                                                               "66.6")


def test_levels_csv_of_a_deidentified_run_names_no_path_or_patient():
    from ctbmd.report import deidentified_dict, levels_csv

    text = levels_csv(deidentified_dict(_result()))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["scan"], r["patient_id"]) for r in rows} == {("de-identified scan", "")}
    assert "P0042" not in text and "/data" not in text


# --------------------------------------------------------------------------- evaluate with few patients

@pytest.mark.parametrize("patients", [["A"], ["A", "B"]])
def test_evaluate_with_too_few_patients_says_so(tmp_path, patients):
    ref = {"A": (100.0, 104.0), "B": (70.0, 75.0)}
    pred = {"A": (98.0, 107.0), "B": (66.0, 80.0)}
    for name, table in (("ref", ref), ("pred", pred)):
        (tmp_path / f"{name}.csv").write_text("patient_id,level,bmd_mg_cm3\n" + "".join(
            f"{p},{lv},{v}\n" for p in patients for lv, v in zip(("L1", "L2"), table[p])))
    out = tmp_path / "eval"
    rc, so, se = run_cli("evaluate", "--pred", tmp_path / "pred.csv", "--ref", tmp_path / "ref.csv", "--out", out,
                         "--bootstrap", "200")
    n = len(patients)
    assert rc == 0 and se == "", se
    assert f"r² not computed (needs at least 3 patients, got {n})" in so, so
    assert f"95% CIs: not computed (needs at least 3 patients, got {n})" in so, so
    metrics_md = (out / "metrics.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    pairs = (out / "pairs.csv").read_text()
    for text in (so, metrics_md, json.dumps(metrics), pairs):
        assert "nan" not in text.lower(), text
    assert f"| Pearson r | not computed: needs at least 3 patients, got {n} |" in metrics_md, metrics_md
    assert f"95% CIs of all: not computed: needs at least 3 patients, got {n}." in metrics_md
    allm = metrics["splits"]["all"]
    assert allm["patient"]["r"] is None and allm["ci"] == {}
    assert allm["not_computed"]["patient.r"] == f"needs at least 3 patients, got {n}"
    assert allm["patient"]["mae"] is not None and allm["patient"]["bias"] is not None
    if n == 1:
        assert "LoA not computed (needs at least 2 patients, got 1)" in so, so
        assert allm["patient"]["loa_low"] is None and allm["diagnosis"]["auc_osteoporosis"] is None
        assert "| LoA low (mg/cm³) | not computed: needs at least 2 patients, got 1 |" in metrics_md
    else:
        assert allm["patient"]["loa_low"] is not None and "patient.loa_low" not in allm["not_computed"]
    for name in ("scatter.png", "bland_altman.png", "confusion.png", "roc.png"):
        assert (out / name).stat().st_size > 0, name
