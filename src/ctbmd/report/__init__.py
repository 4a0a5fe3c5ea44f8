"""Stage 5: result.json, levels.csv, vertebrae.nii.gz, roi.nii.gz, report.png, report.html and,
for a DICOM input, the DICOM SEG, SR and Secondary Capture (:mod:`ctbmd.report.dicom`).

Every file is written through :func:`ctbmd.io.write_atomic` (temporary file,
then rename); :func:`write_outputs` first writes them all into a staging
folder, so a failure leaves the output folder as it was. ``result.json`` is
:meth:`ctbmd.result.Result.to_dict` (schema :data:`ctbmd.result.SCHEMA_VERSION`).
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ctbmd.io import labels_on_input_grid, replace_dir, staging_dir, write_atomic, write_image_atomic
from ctbmd.report.dicom import DICOM_FILES
from ctbmd.result import DISCLAIMER, Result, model_value_key, model_value_text
from ctbmd.types import VERSE_LABELS, LabellingRecord

log = logging.getLogger(__name__)

#: The files :func:`write_files` writes into an output folder (for a DICOM input also :data:`DICOM_FILES`).
OUTPUT_FILES = ("result.json", "levels.csv", "vertebrae.nii.gz", "roi.nii.gz", "report.png", "report.html")

#: What :func:`render_png` imports: a standalone Figure and the Agg canvas that writes PNG (no pyplot,
#: which imports about twice as much and may pick a GUI backend).
PLOTTING_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


#: ``levels.csv`` columns (a model's value per level follows with ``--model``). ``scan`` is the scan's name
#: in the report's title (:func:`ctbmd.report.html.scan_title`: the input's last two path parts, or
#: ``de-identified scan``); ``patient_id`` the DICOM PatientID, empty when de-identified or unknown. The
#: centroid is in LPS mm (DICOM patient coordinates: x to the patient's left, y posterior, z superior), as
#: ``centroid_lps_mm`` in ``result.json`` and the ``centroid_*_mm`` columns of a batch's ``cohort.csv``.
CSV_FIELDS = ["scan", "patient_id", "level", "trabecular_hu_median", "trabecular_hu_mean", "trabecular_hu_sd",
              "bmd_mg_cm3", "bmd_ci95_low_mg_cm3", "bmd_ci95_high_mg_cm3", "bmd_from_median_mg_cm3",
              "bmd_caha_mg_cm3", "roi_voxels", "roi_volume_mm3", "centroid_l_mm", "centroid_p_mm", "centroid_s_mm",
              "flags", "used_for_patient"]


def levels_csv(result: dict) -> str:
    """``levels.csv`` text: one row per level, :data:`CSV_FIELDS` columns.

    ``result`` is the ``result.json`` content as written: for a de-identified run
    (:func:`deidentified_dict`) the ``scan`` column reads ``de-identified scan`` and ``patient_id`` is empty.
    """
    from ctbmd.report.html import scan_title

    inp = result["input"]
    deidentified = bool(inp.get("deidentified"))
    scan = scan_title(inp.get("path") or "", deidentified)
    buf = _io.StringIO()
    fields = CSV_FIELDS + ([model_value_key(result["model"]["target"])] if "model" in result else [])
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for lv in result["levels"]:
        ci = lv.get("bmd_ci95_mg_cm3") or [None, None]
        row = {k: lv.get(k) for k in fields}
        row["scan"] = scan
        row["patient_id"] = None if deidentified else inp.get("patient_id")
        row["bmd_ci95_low_mg_cm3"], row["bmd_ci95_high_mg_cm3"] = ci
        centroid = lv.get("centroid_lps_mm") or [None, None, None]
        row["centroid_l_mm"], row["centroid_p_mm"], row["centroid_s_mm"] = (
            None if c is None else round(float(c), 1) for c in centroid)
        row["flags"] = ";".join(lv["flags"])
        w.writerow(row)
    return buf.getvalue()


def render_png(res: Result, result: dict, path: Path, title: str) -> None:
    """The report picture: sagittal and coronal views and, for the builtin labeller, the labelled column.

    The sagittal and coronal views (through the measured vertebrae) outline every
    named vertebra, fill the trabecular ROIs of the measured ones and give their
    BMD and flags. ``title`` names the scan in the heading
    (:func:`ctbmd.report.html.scan_title`). The third panel is the straightened column seen from behind
    (:func:`_column_panel`): every vertebra with its name, the ribs found on each
    side and the sacrum, so the count can be checked at a glance.
    """
    import matplotlib
    from matplotlib.figure import Figure

    from ctbmd.types import VERSE_NAMES

    hu, labels, roi = res.ct.hu, res.seg.labels, res.roi_labels
    sp = res.ct.spacing_mm
    measured_values = [VERSE_LABELS[lv] for lv in res.seg.levels]
    boxes = res.seg.boxes
    box = tuple(slice(min(boxes[v][a].start for v in measured_values if v in boxes),
                      max(boxes[v][a].stop for v in measured_values if v in boxes)) for a in range(3))
    idx = np.nonzero(np.isin(labels[box], measured_values))  # within the measured levels' box
    cx, cy = int(np.median(idx[0])) + box[0].start, int(np.median(idx[1])) + box[1].start
    rec = res.seg.labelling
    panels = 3 if rec is not None and rec.overview is not None else 2
    fig = Figure(figsize=(5.8 * panels, 7.5), facecolor="black")
    axes = fig.subplots(1, panels)
    views = [("sagittal", hu[cx].T, labels[cx].T, roi[cx].T, sp[1]), ("coronal", hu[:, cy].T, labels[:, cy].T, roi[:, cy].T, sp[0])]
    cmap = matplotlib.colormaps["tab10"]
    by_level = {lv["level"]: lv for lv in result["levels"]}
    for ax, (name, img, lab, r, s_in) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=-250, vmax=900, origin="lower", aspect=sp[2] / s_in)
        for value in np.unique(lab):
            level = VERSE_NAMES.get(int(value))
            if not value or level in res.seg.levels or level is None:
                continue
            _outline(ax, lab == value, levels=[0.5], colors=["0.6"], linewidths=0.5)
            ys, xs = np.nonzero(lab == value)
            if name == "sagittal":
                ax.text(xs.min() - 2, ys.mean(), level, color="0.75", ha="right", va="center", fontsize=7)
        for i, level in enumerate(res.seg.levels):
            v = VERSE_LABELS[level]
            if (lab == v).any():
                _outline(ax, lab == v, levels=[0.5], colors=[cmap(i % 10)], linewidths=0.8)
            if (r == v).any():
                _outline(ax, r == v, filled=True, levels=[0.5, 1.5], colors=[cmap(i % 10)], alpha=0.45)
            ys, xs = np.nonzero(lab == v)
            if len(ys) and name == "sagittal":
                lv = by_level[level]
                val = f"{lv['bmd_mg_cm3']:.0f} mg/cm³" if lv["bmd_mg_cm3"] is not None else (
                    f"{lv['trabecular_hu_median']:.0f} HU" if lv["trabecular_hu_median"] is not None else "n/a")
                if lv.get("bmd_dl_mg_cm3") is not None:
                    val += f" (model {lv['bmd_dl_mg_cm3']:.0f})"
                flag = " [" + ",".join(lv["flags"]) + "]" if lv["flags"] else ""
                ax.text(xs.min() - 2, ys.mean(), f"{level} {val}{flag}", color=cmap(i % 10), ha="right",
                        va="center", fontsize=8, fontweight="bold")
        ax.set_title(name, color="white")
        ax.axis("off")
    if panels == 3:
        _column_panel(axes[2], rec)
    p = result["patient"]
    cat = p["category"] or "not classified"
    bmd = f"{p['bmd_mg_cm3']:.0f} mg/cm³ K2HPO4" if p["bmd_mg_cm3"] is not None else "BMD n/a"
    if p.get("bmd_ci95_mg_cm3"):
        bmd += f", 95% {p['bmd_ci95_mg_cm3'][0]:.0f}-{p['bmd_ci95_mg_cm3'][1]:.0f}"
    if p.get("category_certain") is False:
        cat += " (uncertain)"
    fig.suptitle(f"{title}: {cat.upper()} ({bmd}, {'+'.join(p['levels_used']) or '-'}, ACR-QCT)\n"
                 f"contrast: {result['input']['contrast_phase']}   {_calibration_line(result['calibration'])}   "
                 f"{DISCLAIMER}" + _model_line(result),
                 color="white", fontsize=10)
    fig.tight_layout()
    # zlib level 3: half the time of the default 6 for a file about 15% larger
    fig.savefig(path, dpi=110, facecolor="black", format="png", pil_kwargs={"compress_level": 3})


def _outline(ax, mask: np.ndarray, filled: bool = False, **style) -> None:
    """Draw the 0.5 contour of a 2-D bool ``mask`` (rows y, columns x, as shown by ``imshow``), or fill it.

    Contoured on the mask's bounding box with a one-pixel margin, in the full
    image's pixel coordinates: the same lines as contouring the whole image,
    without walking its empty part (a full-resolution slice is mostly empty).
    """
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return
    r0, r1 = max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2)
    c0, c1 = max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2)
    draw = ax.contourf if filled else ax.contour
    draw(np.arange(c0, c1), np.arange(r0, r1), mask[r0:r1, c0:c1], **style)


def _calibration_line(cal: dict) -> str:
    """One line on how HU became BMD, for the report picture."""
    if not cal["ok"]:
        return "BMD not calibrated (HU only)"
    kvp = "" if cal.get("kvp") is None else (
        f", {cal['kvp']:g} kV" + (" assumed" if cal.get("kvp_source") == "assumed" else ""))
    energy = "" if cal.get("effective_energy_kev") is None else f", E {cal['effective_energy_kev']:.1f} keV"
    return f"calibration: {cal['method'].replace('_', ' ')}{kvp}{energy}"


def _column_panel(ax, rec: LabellingRecord) -> None:
    """The straightened column seen from behind, with names, ribs and the sacrum (see :func:`render_png`)."""
    s = rec.overview_s_mm
    half = (rec.overview.shape[0] - 1)  # u spans -half..half in 2 mm steps
    u_max = float(half)  # mm: (n - 1) * 2 mm / 2
    ax.imshow(rec.overview.T, cmap="gray", vmin=-200, vmax=1000, origin="lower", aspect="equal",
              extent=[-u_max, u_max, float(s[0]), float(s[-1])])
    for v, (lo, hi) in zip(rec.vertebrae, rec.segment_s_mm):
        ax.axhline(lo, color="#4fc3f7", lw=0.5, alpha=0.7)
        mid = (lo + hi) / 2.0
        name = v.name or "?"
        colour = "#ffd54f" if v.name not in (None, "S") else ("#ce93d8" if v.name == "S" else "0.6")
        text = "sacrum" if v.name == "S" else name
        ax.text(-u_max - 3, mid, text, color=colour, fontsize=8, fontweight="bold", va="center", ha="right",
                clip_on=False)
        for side, conf in ((-1, v.rib_right), (1, v.rib_left)):
            if conf >= 0.5:
                ax.plot(side * (u_max - 6), mid, "o", ms=5, color="#66bb6a")
        if v.lung >= 0.5:
            ax.plot(-u_max + 22, mid, "s", ms=3, color="#42a5f5")
    anchors = ", ".join(f"{a.kind.replace('_', ' ')} = {a.named}" for a in rec.anchors)
    ax.set_title(f"column seen from behind: {rec.best}\nanchors: {anchors or 'none'}; margin {rec.margin:.1f}\n"
                 "● rib on that side   ■ lung beside the body", color="white", fontsize=8)
    ax.text(-u_max + 2, float(s[0]) + 2, "R", color="white", fontsize=9)
    ax.text(u_max - 8, float(s[0]) + 2, "L", color="white", fontsize=9)
    ax.axis("off")


def _model_line(result: dict) -> str:
    m = result.get("model")
    if not m:
        return ""
    p = result["patient"]
    shown = model_value_text(m["target"], p.get(model_value_key(m["target"])), m)
    origin = "trained on phantoms" if m["phantom_trained"] else "research model"
    return f"\nmodel ({m['arch']}, {origin}): {shown}, {p.get('category_dl') or '-'}"


def deidentified_dict(result: dict, identifiers: tuple[str | None, ...] = ()) -> dict:
    """``result`` without the input's path, patient ID and series UID (``input.deidentified`` is set true).

    ``identifiers`` (and the input's path, patient ID and series UID) are also
    replaced by ``[removed]`` wherever they occur in a text of ``result``: a
    warning naming the chosen series, an error message naming a source file.
    """
    inp = result["input"]
    found = {str(v) for v in (inp.get("path"), inp.get("patient_id"), inp.get("series_uid"), *identifiers) if v}
    text = json.dumps({**result, "input": {**inp, "path": None, "patient_id": None, "series_uid": None,
                                           "deidentified": True}})
    for value in sorted(found, key=len, reverse=True):  # longest first: a path before the folder inside it
        text = text.replace(json.dumps(value)[1:-1], "[removed]")
    return json.loads(text)


def write_files(res: Result, out_dir: str | Path, deidentify: bool = False) -> dict:
    """Write :data:`OUTPUT_FILES` of ``res`` (and, for a DICOM input, :data:`DICOM_FILES`) into ``out_dir``.

    Each file is written atomically; ``out_dir`` is created when missing. Files
    already there with these names are replaced one by one; use
    :func:`write_outputs` to replace them all or none.

    Parameters
    ----------
    res : Result
    out_dir : str or Path
    deidentify : bool
        De-identify the DICOM objects (DICOM PS3.15 Basic Profile,
        :func:`ctbmd.report.deidentify.deidentify`), and leave the input's path,
        patient ID and series UID out of ``result.json``, the picture's title and
        ``report.html``.

    Returns
    -------
    dict
        The ``result.json`` content written. When the DICOM objects cannot be
        made (a source header highdicom cannot use), the other files are still
        written and a warning saying why is added to ``warnings``.
    """
    from ctbmd.report.html import render_report_html, scan_title

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = res.to_dict()
    identifiers = (res.ct.info.path, str(Path(res.ct.info.path).resolve()), res.ct.info.series_uid,
                   res.ct.info.patient_id)
    if deidentify:
        result = deidentified_dict(result, identifiers)
    title = scan_title(res.ct.info.path, deidentify)
    dicom = res.ct.info.format == "dicom" and bool(res.ct.info.source_files)

    def maps_and_dicom():
        vert = labels_on_input_grid(res.seg.labels, res.ct)
        roi = labels_on_input_grid(res.roi_labels, res.ct)
        write_image_atomic(vert, out / "vertebrae.nii.gz")
        write_image_atomic(roi, out / "roi.nii.gz")
        if not dicom:
            return None, None
        import SimpleITK as sitk

        from ctbmd.report.dicom import build_seg_and_sr

        try:
            return build_seg_and_sr(result, res.ct.info.source_files, sitk.GetArrayViewFromImage(vert),
                                    sitk.GetArrayViewFromImage(roi), res.seg.backend), None
        except Exception as exc:  # noqa: BLE001 - the analysis stands; the DICOM objects are reported missing
            return None, exc

    # the label maps and the DICOM SEG/SR (array work in SimpleITK and numpy, which release the GIL) are
    # made in a second thread while matplotlib draws the picture; an error in either is raised here
    with ThreadPoolExecutor(max_workers=1) as pool:
        maps = pool.submit(maps_and_dicom)
        write_atomic(out / "levels.csv", lambda p: p.write_text(levels_csv(result)))
        write_atomic(out / "report.png", lambda p: render_png(res, result, p, title))
        png = (out / "report.png").read_bytes()
        partial, error = maps.result()
    objects = None
    if partial is not None:
        from ctbmd.report.dicom import with_secondary_capture

        try:
            objects = with_secondary_capture(partial, png, deidentified=deidentify)
        except Exception as exc:  # noqa: BLE001 - as above
            error = exc
    if error is not None:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        log.warning("DICOM SEG/SR/SC not written: %s", reason)
        result = {**result, "warnings": [*result["warnings"], f"DICOM SEG/SR/SC not written ({reason})"]}
        if deidentify:  # the error may quote a source file's path
            result = deidentified_dict(result, identifiers)
    page = render_report_html(result, png, title)
    write_atomic(out / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    write_atomic(out / "result.json", lambda p: p.write_text(json.dumps(result, indent=2)))
    if objects is not None:
        for name, ds in zip(DICOM_FILES, (objects.seg, objects.sr, objects.sc)):
            write_atomic(out / name, lambda p, ds=ds: ds.save_as(p, enforce_file_format=True))
    return result


def write_outputs(res: Result, out_dir: str | Path, deidentify: bool = False) -> dict:
    """Write the outputs of ``res`` as the folder ``out_dir``, whole; return the result dict.

    The files are written into a hidden staging folder beside ``out_dir``
    (``.<name>.ctbmd-staging-XXXX``, :func:`ctbmd.io.staging_dir`), which then
    takes the place of ``out_dir`` (:func:`ctbmd.io.replace_dir`): an earlier
    result there is replaced whole, never file by file, and an error or a kill
    at any point (a full disk, a drawing failure, SIGKILL) leaves either the
    earlier folder or the new one, never a mix. ``deidentify`` as for
    :func:`write_files`. Hold :func:`ctbmd.io.output_lock` around the call
    when other runs may write the same folder (``ctbmd run`` does).

    Raises
    ------
    OSError
        ``out_dir`` or its parent cannot be created or written.
    """
    out = Path(os.path.realpath(out_dir))  # a symlink's target is replaced, not the link; "." by its name
    staging = staging_dir(out)
    try:
        result = write_files(res, staging, deidentify)
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
