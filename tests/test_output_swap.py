"""Issue 17: the output folder is replaced whole, never mixed, even when the run is killed mid-move.

A phantom small enough to run in about 4 s stands in for a scan: what is checked here is the writing of the
files, which is the same for every input.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli
from ctbmd.errors import EXIT_USAGE


def _snapshot(folder):
    """{file name: bytes} of a folder, hidden files included."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    rc, _, se = run_cli("simulate", "--out", root / "ph", "--pixel", "2", "--slice", "3", "--seed", "5")
    assert rc == 0, se
    return root / "ph" / "ct.nii.gz"


def _ctbmd(*args, strace=None):
    cmd = [sys.executable, "-c", "from ctbmd.cli import main; main()", *map(str, args)]
    if strace:
        cmd = [shutil.which("strace"), "-f", "-qq", "-e", "signal=none", "-o", os.devnull, *strace, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_a_kill_at_any_rename_leaves_the_earlier_result_or_the_new_one_whole(tmp_path, small_phantom):
    """SIGKILL injected by strace at each rename of a run that replaces an earlier result (``--kvp 100``
    after the default 120 kV, so every BMD differs): the six in the private staging folder and the one
    exchange that is the final move. After each kill the folder is exactly the earlier result; the run not
    killed replaces it whole; no staging folder stays once a run has cleaned up."""
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is not installed, but .ci/run installs it")
        pytest.skip("strace not installed (.ci/run installs it)")
    out = tmp_path / "out"
    assert _ctbmd("run", small_phantom, "--out", out, "--quiet").returncode == 0
    earlier = _snapshot(out)
    # what the new result looks like, then a clean replacing run, traced: how many renames it makes
    trace = tmp_path / "renames.txt"
    proc = _ctbmd("run", small_phantom, "--out", tmp_path / "new", "--quiet", "--kvp", "100")
    assert proc.returncode == 0, proc.stderr
    new = _snapshot(tmp_path / "new")
    assert set(new) == set(earlier) and new["result.json"] != earlier["result.json"]
    proc = subprocess.run([shutil.which("strace"), "-f", "-qq", "-e", "signal=none", "-e",
                           "trace=rename,renameat,renameat2", "-o", str(trace), sys.executable, "-c",
                           "from ctbmd.cli import main; main()", "run", str(small_phantom), "--out", str(out),
                           "--quiet", "--kvp", "100"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    renames = [line for line in trace.read_text().splitlines() if "rename" in line]
    exchanges = [line for line in renames if "RENAME_EXCHANGE" in line]
    assert len(exchanges) == 1 and str(out) in exchanges[0], renames  # the final move is one exchange
    assert len(renames) == 7, renames  # six files inside the staging folder, then the exchange
    # strace counts calls per thread (the label maps are written by a second thread): kill at the 1st, 2nd,
    # ... rename of whichever thread gets there first, then at the exchange itself
    files = [line for line in renames if line not in exchanges]
    per_thread = max(sum(line.split()[0] == pid for line in files) for pid in {r.split()[0] for r in files})
    kills = [("rename", when) for when in range(1, per_thread + 1)] + [("renameat2", 1)]
    for syscall, when in kills:
        shutil.rmtree(out)
        out.mkdir()
        for name, data in earlier.items():
            (out / name).write_bytes(data)
        proc = _ctbmd("run", small_phantom, "--out", out, "--quiet", "--kvp", "100",
                      strace=["-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=SIGKILL:when={when}"])
        assert proc.returncode in (-9, 137), (syscall, when, proc.returncode, proc.stderr)
        assert _snapshot(out) == earlier, (syscall, when)  # killed before the exchange: the earlier result whole
    # the same run not killed replaces it whole: every file is the new run's
    proc = _ctbmd("run", small_phantom, "--out", out, "--quiet", "--kvp", "100")
    assert proc.returncode == 0, proc.stderr
    now = _snapshot(out)
    assert set(now) == set(new)
    assert json.loads(now["result.json"])["levels"] == json.loads(new["result.json"])["levels"]
    assert now["levels.csv"] == new["levels.csv"] and now["vertebrae.nii.gz"] == new["vertebrae.nii.gz"]
    # the killed runs left staging folders; the next run removed them and said so
    assert "removed .out.ctbmd-staging-" in proc.stderr, proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if ".ctbmd-staging-" in p.name]


def test_the_fallback_without_an_exchange_is_restored_after_a_kill_between_its_renames(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is not supported the earlier folder is renamed aside first; a crash
    between the two renames leaves ``out`` missing and the earlier result whole aside, and the next run's
    cleanup puts it back."""
    from ctbmd import io as ctio

    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("earlier")
    staging = ctio.staging_dir(out)
    (staging / "result.json").write_text("new")
    monkeypatch.setattr(ctio.output, "_exchange", lambda a, b: False)  # where replace_dir looks it up
    real_rename, calls = os.rename, []

    def crash_on_second(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for the process dying between the renames
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ctio.replace_dir(staging, out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists()
    with ctio.output_lock(out):
        done = ctio.clean_stale(out)
    assert (out / "result.json").read_text() == "earlier"
    assert any("restored the earlier result" in d for d in done) and not staging.exists()
    # without a crash, the fallback replaces the folder whole
    staging = ctio.staging_dir(out)
    (staging / "result.json").write_text("new")
    monkeypatch.setattr(ctio.output, "_exchange", lambda a, b: False)  # where replace_dir looks it up
    ctio.replace_dir(staging, out)
    assert (out / "result.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.ctbmd-")] == [".out.ctbmd-lock"]


def test_a_second_run_into_the_same_out_is_refused_while_the_first_writes(tmp_path, small_phantom):
    from ctbmd.io import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # another run holds the folder
        rc, _, se = run_cli("run", small_phantom, "--out", out)
    assert rc == EXIT_USAGE and len(se.strip().splitlines()) == 1, se
    assert "another ctbmd run is writing into this folder" in se
    assert not out.exists() or list(out.iterdir()) == []


def test_an_out_holding_other_files_is_refused_not_overwritten(tmp_path, small_phantom):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, se = run_cli("run", small_phantom, "--out", out)
    assert rc == EXIT_USAGE and "holds files that are not a ctbmd result (notes.txt)" in se, se
    assert _snapshot(out) == {"notes.txt": b"mine"}


def test_an_earlier_result_is_replaced_whole_and_said(tmp_path, small_phantom):
    out = tmp_path / "out"
    rc, so, _ = run_cli("run", small_phantom, "--out", out, "--quiet")
    assert rc == 0 and "replaced" not in so
    mode = oct(out.stat().st_mode & 0o777)
    rc, so, _ = run_cli("run", small_phantom, "--out", out, "--quiet", "--kvp", "100")
    assert rc == 0 and "an earlier result there was replaced whole" in so
    assert oct(out.stat().st_mode & 0o777) == mode == oct(0o777 & ~__import__("ctbmd.io").io._UMASK)
    assert json.loads((out / "result.json").read_text())["calibration"]["kvp"] == 100


def test_a_symlinked_out_replaces_its_target_and_keeps_the_link(tmp_path, small_phantom):
    """The folder a symlink names is replaced, not the link (which once became a folder of its own while the
    target kept the earlier result); ``--out .`` is the current folder by its name."""
    real = tmp_path / "real"
    link = tmp_path / "link"
    assert run_cli("run", small_phantom, "--out", real, "--quiet")[0] == 0
    link.symlink_to(real, target_is_directory=True)
    rc, _, se = run_cli("run", small_phantom, "--out", link, "--quiet", "--kvp", "100")
    assert rc == 0, se
    assert link.is_symlink() and json.loads((real / "result.json").read_text())["calibration"]["kvp"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.ctbmd-lock", "link", "real"]
    here = tmp_path / "here"
    here.mkdir()
    rc, _, se = run_cli("run", small_phantom, "--out", ".", "--quiet", cwd=here)
    assert rc == 0, se
    assert (here / "result.json").exists() and (tmp_path / ".here.ctbmd-lock").exists()


def test_a_closed_stderr_does_not_break_a_run(tmp_path, small_phantom):
    """``ctbmd run ... 2>&-`` (a cron job): Python's sys.stderr is None; the readers' quieting must cope."""
    proc = subprocess.run([sys.executable, "-c", "from ctbmd.cli import main; main()", "run", str(small_phantom),
                           "--out", str(tmp_path / "out"), "--quiet"], stdout=subprocess.PIPE, text=True,
                          preexec_fn=lambda: os.close(2))
    assert proc.returncode == 0 and "levels:" in proc.stdout


def test_the_cleanup_matches_the_out_name_literally(tmp_path):
    """An output folder named like a glob pattern (``p[12]``) must not clean up or restore ``p1``'s or ``p2``'s
    leftovers."""
    from ctbmd import io as ctio

    other = tmp_path / ".p1.ctbmd-staging-abc"
    other.mkdir()
    aside = tmp_path / ".p2.ctbmd-old-999"
    aside.mkdir()
    out = tmp_path / "p[12]"
    with ctio.output_lock(out):
        assert ctio.clean_stale(out) == []
    assert other.exists() and aside.exists() and not out.exists()
