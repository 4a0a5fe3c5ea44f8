"""Writing a phantom: ``ct.nii.gz`` or a ``ct/`` DICOM series, ``labels.nii.gz``, ``truth.json`` and
``reference.csv`` (:func:`write_phantom`)."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from ctbmd.simulate.spec import Phantom


def write_phantom(phantom: Phantom, out_dir: str | Path, dicom: bool = False) -> dict[str, Path]:
    """Write ``ct.nii.gz`` (or a ``ct/`` DICOM series), ``labels.nii.gz``, ``truth.json`` and ``reference.csv``.

    ``reference.csv`` is the phantom's truth as a QCT reference table for
    ``ctbmd evaluate``: ``patient_id`` (the output folder's name, which is also
    the DICOM PatientID of a ``--dicom`` phantom), ``level``, ``bmd_mg_cm3``
    (the QCT-equivalent truth) and ``k2hpo4_mg_cm3`` (the K2HPO4 set in the
    marrow). Files are written atomically (temporary name, then rename).

    Returns
    -------
    dict
        Kind -> path written.
    """
    from ctbmd.io import array_to_image, write_atomic, write_image_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    image = array_to_image(phantom.hu, phantom.grid)
    if dicom:
        paths["ct"] = _write_dicom(image, out / "ct", phantom.truth)
    else:
        paths["ct"] = write_image_atomic(image, out / "ct.nii.gz")
    paths["labels"] = write_image_atomic(array_to_image(phantom.labels, phantom.grid), out / "labels.nii.gz")
    text = json.dumps(phantom.truth, indent=1)
    paths["truth"] = write_atomic(out / "truth.json", lambda p: p.write_text(text))
    rows = "".join(f"{out.resolve().name},{lv['level']},{lv['qct_equivalent_mg_cm3']:.3f},{lv['bmd_mg_cm3']:.3f}\n"
                   for lv in phantom.truth["levels"])
    paths["reference"] = write_atomic(out / "reference.csv", lambda p: p.write_text(
        "patient_id,level,bmd_mg_cm3,k2hpo4_mg_cm3\n" + rows))
    return paths


def _write_dicom(image: sitk.Image, folder: Path, truth: dict) -> Path:
    """Write a CT DICOM series (one file per slice) with the tags ``ctbmd run`` reads."""
    import shutil
    import tempfile

    from pydicom.uid import generate_uid

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ct-", dir=folder.parent))
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    settings = truth["settings"]
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0060": "CT", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0008|0070": "ctbmd simulate",
        "0010|0010": "Phantom^ctbmd", "0010|0020": folder.parent.resolve().name,
        "0018|0060": str(settings["kvp"]), "0018|0050": f"{settings['slice_thickness_mm']:.3f}",
        "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": frame_uid,
        "0008|103e": "ctbmd digital phantom", "0028|1052": "0", "0028|1053": "1",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                      direction[1], direction[4], direction[7])),
    }
    if settings["phase"] != "native":
        common["0018|0010"] = "IODINE"
    try:
        for k in range(image.GetDepth()):
            sl = image[:, :, k]
            for tag, val in common.items():
                sl.SetMetaData(tag, val)
            pos = image.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0020|0032", "\\".join(f"{p:.4f}" for p in pos))
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0018", generate_uid())
            writer.SetFileName(str(staging / f"slice_{k:04d}.dcm"))
            writer.Execute(sl)
        if folder.exists():
            shutil.rmtree(folder)
        staging.replace(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
