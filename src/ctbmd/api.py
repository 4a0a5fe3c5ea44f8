"""The Python API: :func:`analyse` one scan, or :func:`run` it and write the files.

For a notebook::

    import ctbmd

    res = ctbmd.analyse("ct.nii.gz")              # a ctbmd.Result; nothing written
    res.patient.category, res.bmd_mg_cm3()["L1"]  # typed fields
    res.to_dict()["levels"]                       # the result.json content
    ctbmd.run("ct.nii.gz", "out/ct")              # the same, and the files of `ctbmd run`

Both compose the same steps as ``ctbmd run``: :func:`ctbmd.pipeline.analyse`
(read, segment, ROI, calibrate, classify), then, when a model is given,
:func:`ctbmd.model.store.add_model`, then for :func:`run`
:func:`ctbmd.report.write_outputs`. Errors are :class:`ctbmd.errors.CtbmdError`
subclasses, each with the exit code the CLI gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ctbmd.pipeline import analyse as analyse_scan
from ctbmd.pipeline import preload
from ctbmd.result import Result
from ctbmd.segment import parse_levels
from ctbmd.segment.builtin import REPORTED_LEVELS
from ctbmd.types import CTVolume

log = logging.getLogger(__name__)

def analyse(source: str | Path | CTVolume, *, segmenter: str = "builtin", labels: str | Path | None = None,
            label_map: str = "auto", series_uid: str | None = None,
            levels: str | tuple[str, ...] = REPORTED_LEVELS, kvp: float | None = None, rods: str | None = None,
            scanner_profile: str | Path | None = None, model=None,
            progress: Callable[[str], None] | None = None) -> Result:
    """Analyse one CT and return its :class:`~ctbmd.result.Result`; write nothing.

    Parameters
    ----------
    source : str, Path or CTVolume
        A ``.nii``/``.nii.gz``/``.nrrd``/``.mha`` file, a DICOM folder, or a CT
        already read with :func:`ctbmd.io.read_ct`.
    segmenter : {"builtin", "labels", "totalsegmentator"}
        How the vertebrae are found; ``labels`` reads ``labels``.
    labels : str or Path, optional
        An existing vertebra label map on the CT's grid (implies ``segmenter="labels"``).
    label_map : {"auto", "total", "verse", "vertebrae_pp", "vertebrae_pp_refined"}
        Numbering of ``labels``.
    series_uid : str, optional
        The DICOM series to read when a folder holds several.
    levels : str or tuple of str
        Levels to measure: ``"T11-L5"`` (the default), ``"T4-T12"``, ``"L1,L2,L4"`` or a tuple of names.
    kvp : float, optional
        Tube voltage (kV, 70-150) for a scan whose header has none (NIfTI).
    rods, scanner_profile :
        Synchronous (rod phantom in the scan) or asynchronous (scanner profile)
        calibration instead of the phantomless one; see :func:`ctbmd.pipeline.analyse`.
    model : str, Path or ctbmd.model.store.BmdModel, optional
        A model folder from ``ctbmd train`` (loaded here; needs PyTorch and
        MONAI) or a loaded model: adds its per-level values (``Result.dl``).
    progress : callable, optional
        Called with each stage name (:data:`ctbmd.pipeline.STAGES`) as it starts.

    Returns
    -------
    Result
        Typed stage outputs; :meth:`~ctbmd.result.Result.to_dict` gives the ``result.json`` content.

    Raises
    ------
    CtbmdError
        :class:`~ctbmd.errors.UsageError` for bad options or a missing optional
        dependency, :class:`~ctbmd.errors.InvalidInputError` for an unreadable or
        invalid scan or model, :class:`~ctbmd.errors.NoSpineError` when no level
        can be named.
    """
    if labels is not None and segmenter == "builtin":
        segmenter = "labels"
    measured = parse_levels(levels if isinstance(levels, str) else ",".join(levels))  # checked and ordered
    loaded = load_model(model) if isinstance(model, (str, Path)) else model  # before the scan: fail early
    res = analyse_scan(source, segmenter=segmenter, labels=labels, label_map=label_map, series_uid=series_uid,
                       progress=progress, levels=measured, kvp=kvp, rods=rods, scanner_profile=scanner_profile)
    if loaded is not None:
        from ctbmd.model.store import add_model

        if progress:
            progress("model")
        res = add_model(res, loaded)
    return res


def run(source: str | Path | CTVolume, out_dir: str | Path, *, deidentify: bool = False, **options) -> Result:
    """Analyse one CT as :func:`analyse` does and write the files of ``ctbmd run`` into ``out_dir``.

    The files (``result.json``, ``levels.csv``, ``vertebrae.nii.gz``,
    ``roi.nii.gz``, ``report.png``, ``report.html`` and, for a DICOM series,
    ``vertebrae_seg.dcm``, ``bmd_sr.dcm``, ``report_sc.dcm``) appear together
    once all are written (:func:`ctbmd.report.write_outputs`): an earlier result
    in ``out_dir`` is replaced whole, and a failure or a kill leaves it as it
    was. What an interrupted run left beside ``out_dir`` is cleaned up first.

    Parameters
    ----------
    source : str, Path or CTVolume
        As for :func:`analyse`.
    out_dir : str or Path
        Output folder; created when missing.
    deidentify : bool
        De-identify the DICOM outputs (DICOM PS3.15 Basic Profile) and leave the
        input's path, patient ID and series UID out of the other files
        (:func:`ctbmd.report.write_files`).
    **options
        The keyword options of :func:`analyse`.

    Returns
    -------
    Result
        The analysis; ``result.to_dict()`` equals the ``result.json`` written, except that
        ``deidentify`` leaves out the input's path, patient ID and series UID, and that a
        warning is added there when the DICOM objects of a DICOM input could not be made.

    Raises
    ------
    UsageError
        ``out_dir`` is a file, lies under a file, cannot be written, or holds
        files that are not an earlier result; raised before the analysis
        (:func:`ctbmd.io.check_output_dir`). Another run is writing
        ``out_dir`` (:func:`ctbmd.io.output_lock`).
    CtbmdError
        As :func:`analyse`.
    OSError
        ``out_dir`` fails while the files are written (a full disk).
    """
    from ctbmd.io import check_output_dir, clean_stale, output_lock
    from ctbmd.report import DICOM_FILES, OUTPUT_FILES, write_outputs

    # before the analysis: an unwritable --out, or one holding other files, fails in a second, not after it
    out_dir = check_output_dir(out_dir, OUTPUT_FILES + DICOM_FILES)  # absolute, a symlink resolved
    with output_lock(out_dir):
        for line in clean_stale(out_dir):
            log.warning("%s", line)
        preload()  # later modules (plotting, KD-tree) imported in the background while the scan is read
        res = analyse(source, **options)
        progress = options.get("progress")
        if progress:
            progress("report")
        write_outputs(res, out_dir, deidentify)
    return res


def load_model(path: str | Path):
    """Load a model folder from ``ctbmd train`` (:func:`ctbmd.model.store.load_model`).

    Raises
    ------
    BackendUnavailableError
        PyTorch or MONAI is not installed (``pip install 'ctbmd[dl]'``).
    UsageError, InvalidInputError
        As :func:`ctbmd.model.store.load_model`.
    """
    require_dl("a model", path)
    from ctbmd.model.store import load_model as load

    return load(path)


def require_dl(what: str, path: str | Path | None = None) -> None:
    """Raise :class:`~ctbmd.errors.BackendUnavailableError` naming ``what`` when PyTorch or MONAI is missing."""
    from ctbmd.errors import require_optional

    require_optional(("torch", "monai"), what, "pip install torch==2.13.0 && pip install 'ctbmd[dl]'", path)


__all__ = ["Result", "analyse", "load_model", "run"]
