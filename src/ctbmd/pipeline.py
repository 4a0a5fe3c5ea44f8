"""The end-to-end job: CT in, per-vertebra BMD report out (``ctbmd run``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ctbmd.calibrate import fit_calibration, reference_tissues
from ctbmd.classify import classify_patient, detect_contrast_phase
from ctbmd.io import read_ct
from ctbmd.report import Result, write_outputs
from ctbmd.roi import measure_levels
from ctbmd.segment import segment
from ctbmd.segment.builtin import REPORTED_LEVELS

STAGES = ("read", "segment", "roi", "calibrate", "classify", "model", "report")


def analyse(path: str | Path, segmenter: str = "builtin", labels: str | Path | None = None,
            label_map: str = "auto", series_uid: str | None = None,
            progress: Callable[[str], None] | None = None, model=None,
            levels: tuple[str, ...] = REPORTED_LEVELS) -> Result:
    """Run stages 1-4 (and a learned model) on one scan and return everything for the report.

    Parameters
    ----------
    path : str or Path
        NIfTI/NRRD/MHA file or DICOM folder.
    segmenter, labels, label_map, levels :
        See :func:`ctbmd.segment.segment`.
    series_uid : str, optional
        DICOM series to read.
    progress : callable, optional
        Called with each stage name as it starts.
    model : ctbmd.model.store.BmdModel, optional
        A loaded model (:func:`ctbmd.model.store.load_model`); its per-level
        values are reported beside the calibrated BMD.

    Raises
    ------
    CtbmdError
        Any subclass, with the exit code the CLI uses.
    """
    tick = progress or (lambda _stage: None)
    tick("read")
    ct, warnings = read_ct(path, series_uid)
    tick("segment")
    seg = segment(ct, segmenter, labels, label_map, levels)
    warnings += list(seg.warnings)
    tick("roi")
    levels, roi_labels = measure_levels(ct, seg)
    tick("calibrate")
    tissues = reference_tissues(ct, seg)
    phase = detect_contrast_phase(ct.info, tissues)
    calibration = fit_calibration(tissues, phase, ct.info.kvp)
    if not calibration.ok:
        warnings.append(calibration.reason)
    tick("classify")
    patient = classify_patient(levels, calibration, phase)
    warnings += list(patient.notes)
    for m in levels:
        if m.flags:
            warnings.append(f"{m.level}: {', '.join(m.flags)}")
    dl = None
    if model is not None:
        tick("model")
        from ctbmd.model.store import apply_model

        dl = apply_model(model, ct, roi_labels, levels, calibration, phase)
        warnings += [f"{lv}: no model value ({why})" for lv, why in dl.skipped.items()]
    return Result(ct=ct, seg=seg, levels=levels, roi_labels=roi_labels, calibration=calibration,
                  phase=phase, patient=patient, warnings=warnings, dl=dl)


def run(path: str | Path, out_dir: str | Path, progress: Callable[[str], None] | None = None, **options) -> dict:
    """Analyse one scan and write its outputs into ``out_dir``.

    All files are first written to a temporary folder next to ``out_dir`` and
    moved in only when every stage has succeeded, so a failure leaves
    ``out_dir`` as it was.

    Returns
    -------
    dict
        The ``result.json`` content.
    """
    res = analyse(path, progress=progress, **options)
    if progress:
        progress("report")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        result = write_outputs(res, staging)
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            f.replace(out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
