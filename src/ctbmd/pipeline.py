"""Stages 1-4 chained: a CT in, a :class:`ctbmd.result.Result` out.

:func:`analyse` reads the scan, labels the vertebrae, measures a trabecular ROI
in each, calibrates HU to K2HPO4 mg/cm³ and classifies the patient. Writing the
files (:func:`ctbmd.report.write_outputs`) and applying a learned model
(:func:`ctbmd.model.store.add_model`) are separate steps that
:mod:`ctbmd.api` and the CLI compose after it; this module imports neither
PyTorch nor MONAI.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from ctbmd.calibrate import fit_calibration, reference_tissues
from ctbmd.calibrate.energy import KVP_RANGE
from ctbmd.classify import classify_patient, detect_contrast_phase
from ctbmd.errors import UsageError
from ctbmd.io import read_ct
from ctbmd.report import PLOTTING_MODULES
from ctbmd.result import Result
from ctbmd.roi import measure_levels
from ctbmd.segment import segment
from ctbmd.segment.builtin import REPORTED_LEVELS
from ctbmd.segment.orientation import check_superior_inferior
from ctbmd.types import Calibration, CTVolume, LevelMeasurement, PatientClassification, SpineSegmentation

#: The stages a run reports through ``progress``: :func:`analyse` ticks the first five, the model
#: step (:mod:`ctbmd.api`) and the writing of the files the last two.
STAGES = ("read", "segment", "roi", "calibrate", "classify", "model", "report")
#: Modules a run needs only after the read: the KD-tree of the labeller's column coordinates and
#: the report's plotting (:func:`preload`).
LATER_MODULES = ("scipy.spatial",) + PLOTTING_MODULES


def preload(modules: tuple[str, ...] = LATER_MODULES) -> threading.Thread:
    """Start importing ``modules`` in a background thread; return the thread.

    Importing matplotlib takes 0.3-0.5 s, a sixth of a 3 mm run (issue 13). Started
    before the scan is read, the import overlaps the read and the labeller, whose
    array work (SimpleITK, scipy.ndimage, numpy) releases the GIL. The code that
    needs a module imports it as usual; Python's per-module import lock makes it
    wait for a thread still at work, so the result is the same with or without the
    preload. Raises nothing: an import error surfaces again where the module is
    imported for use.
    """
    def load() -> None:
        try:
            for name in modules:
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - raised again where the module is imported for use
            pass

    thread = threading.Thread(target=load, name="ctbmd-preload")
    thread.start()
    return thread


def analyse(source: str | Path | CTVolume, segmenter: str = "builtin", labels: str | Path | None = None,
            label_map: str = "auto", series_uid: str | None = None,
            progress: Callable[[str], None] | None = None,
            levels: tuple[str, ...] = REPORTED_LEVELS, kvp: float | None = None,
            rods: str | None = None, scanner_profile: str | Path | None = None) -> Result:
    """Run stages 1-4 on one scan: read, segment, trabecular ROIs, calibration, classification.

    A learned model is not a stage of this function: apply one to the result
    with :func:`ctbmd.model.store.add_model` (what :func:`ctbmd.analyse` and
    ``ctbmd run --model`` do), so this module never imports PyTorch.

    Parameters
    ----------
    source : str, Path or CTVolume
        NIfTI/NRRD/MHA file or DICOM folder; or a CT already read
        (:func:`ctbmd.io.read_ct`), whose read step is then skipped.
    segmenter, labels, label_map, levels :
        See :func:`ctbmd.segment.segment`.
    series_uid : str, optional
        DICOM series to read.
    progress : callable, optional
        Called with each stage name (:data:`STAGES`) as it starts.
    kvp : float, optional
        Tube voltage (kV, 70-150) for a scan whose header has none (NIfTI);
        it overrides the header, with a warning when the two differ.
    rods : str, optional
        Rod spec of a calibration phantom lying in the scan
        (:func:`ctbmd.calibrate.rods.parse_rod_spec`): synchronous calibration.
    scanner_profile : str or Path, optional
        A profile from ``ctbmd calibrate-scanner``: asynchronous calibration.

    Returns
    -------
    Result
        Every stage's output; its ``warnings`` merge those of every stage.

    Raises
    ------
    CtbmdError
        Any subclass, with the exit code the CLI uses: bad options
        (:class:`~ctbmd.errors.UsageError`), an unreadable or invalid scan,
        or one whose anatomy contradicts its header's superior/inferior axis
        (:class:`~ctbmd.errors.InvalidInputError`), no spine or levels that
        cannot be named (:class:`~ctbmd.errors.NoSpineError`).
    """
    tick = progress or (lambda _stage: None)
    check_kvp(kvp)
    rod_spec, profile = _calibration_inputs(rods, scanner_profile)
    tick("read")
    ct = source if isinstance(source, CTVolume) else read_ct(source, series_uid)
    kvp_used, kvp_source = (ct.info.kvp, "header") if kvp is None else (float(kvp), "option")
    if profile is not None:
        from ctbmd.calibrate.rods import check_profile

        check_profile(profile, _with_kvp(ct, kvp_used).info)  # a kVp or kernel mismatch fails here, before segmenting
    tick("segment")
    check_superior_inferior(ct)  # a header flipped head to foot is refused before any level is named
    seg = segment(ct, segmenter, labels, label_map, levels)
    tick("roi")
    # the reference tissues are sampled in a second thread while the ROIs are measured: both only
    # read the scan and the labels, and their numpy and scipy work releases the GIL
    with ThreadPoolExecutor(max_workers=1) as pool:
        sampling = pool.submit(reference_tissues, ct, seg)
        measured, roi_labels = (rois := measure_levels(ct, seg)).levels, rois.roi_labels
        tick("calibrate")
        sample = sampling.result()
    phase = detect_contrast_phase(ct.info, sample.tissues)
    if rod_spec is not None or profile is not None:
        calibration = _rod_calibration(ct, sample, rod_spec, profile, kvp_used, kvp_source)
    else:
        calibration = fit_calibration(sample, phase, kvp_used, kvp_source)
    tick("classify")
    patient = classify_patient(measured, calibration, phase)
    return Result(ct=ct, seg=seg, levels=tuple(measured), roi_labels=roi_labels, calibration=calibration,
                  phase=phase, patient=patient,
                  warnings=merge_warnings(ct, kvp, seg, calibration, patient, tuple(measured)))


def merge_warnings(ct: CTVolume, kvp: float | None, seg: SpineSegmentation, calibration: Calibration,
                   patient: PatientClassification, measured: tuple[LevelMeasurement, ...]) -> tuple[str, ...]:
    """Every stage's warnings, in the order the stages ran: the one place they are merged.

    Parameters
    ----------
    ct : CTVolume
        Its ``info.notes`` (the read's remarks).
    kvp : float or None
        The tube voltage given by the caller, noted when it overrides a different header value.
    seg, calibration, patient, measured :
        The stages' results: the labeller's warnings, the calibration's failure reason and QC flags, the
        patient's notes, and each level's flags.

    Returns
    -------
    tuple of str
    """
    warnings = list(ct.info.notes)
    if kvp is not None and ct.info.kvp is not None and abs(ct.info.kvp - kvp) > 1.0:
        warnings.append(f"--kvp {kvp:g} overrides the header's KVP {ct.info.kvp:g}")
    warnings += list(seg.warnings)
    if not calibration.ok:
        warnings.append(calibration.reason)
    warnings += [f"calibration: {q}" for q in calibration.qc_flags]
    warnings += list(patient.notes)
    warnings += [f"{m.level}: {', '.join(m.flags)}" for m in measured if m.flags]
    return tuple(warnings)


def _calibration_inputs(rods: str | None, scanner_profile: str | Path | None):
    """(rod spec or None, scanner profile or None), parsed and read; both at once is a usage error."""
    if rods is not None and scanner_profile is not None:
        raise UsageError("give a rod spec or a scanner profile, not both")
    rod_spec = profile = None
    if rods is not None:
        from ctbmd.calibrate.rods import parse_rod_spec

        rod_spec = parse_rod_spec(rods)
    if scanner_profile is not None:
        from ctbmd.calibrate.rods import load_profile

        profile = load_profile(scanner_profile)
    return rod_spec, profile


def _rod_calibration(ct: CTVolume, sample, rod_spec, profile, kvp_used: float | None, kvp_source: str) -> Calibration:
    """The calibration from rods in the scan (synchronous) or a scanner profile (asynchronous), with the
    reference tissues (measured, not used in the fit) and the body size recorded as a phantomless one would."""
    from ctbmd.calibrate.rods import find_rods, fit_rods, profile_calibration, rod_calibration

    if rod_spec is not None:
        found = find_rods(ct, rod_spec)
        calibration = rod_calibration(fit_rods(found, rod_spec), found, _with_kvp(ct, kvp_used))
    else:
        calibration = profile_calibration(profile, _with_kvp(ct, kvp_used), sample.dw_cm)
    dw = round(sample.dw_cm, 1) if np.isfinite(sample.dw_cm) else None
    tissues = {n: replace(t, used_in_fit=False) for n, t in sample.tissues.items()}
    source_kvp = kvp_source if kvp_used is not None else calibration.kvp_source
    return replace(calibration, dw_cm=dw, tissues=tissues, kvp_source=source_kvp)


def check_kvp(kvp: float | None) -> None:
    """Refuse a tube voltage outside 70-150 kV (the energy table's range).

    Raises
    ------
    UsageError
        ``kvp`` is not a finite number in 70-150.
    """
    lo, hi = KVP_RANGE
    if kvp is not None and not (np.isfinite(kvp) and lo <= kvp <= hi):
        raise UsageError(f"kVp {kvp:g} is outside {lo:.0f}-{hi:.0f} kV")


def _with_kvp(ct: CTVolume, kvp: float | None) -> CTVolume:
    """``ct`` whose ScanInfo carries ``kvp`` (the --kvp option) when given."""
    if kvp is None or ct.info.kvp == kvp:
        return ct
    return replace(ct, info=replace(ct.info, kvp=kvp))
