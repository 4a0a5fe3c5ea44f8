"""DICOM header attributes read defensively, and the checks of one CT slice's header.

Attributes are read without trusting pydicom's conversion (a malformed value
gives None or ``""``, never an exception); :func:`attr_raw` shows a value as
written, for error messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom

from ctbmd.errors import InvalidInputError
from ctbmd.io.limits import (CT_STORAGE_CLASSES, KVP_RANGE, MAX_MATRIX, NATIVE_TRANSFER_SYNTAXES,
                             PIXEL_SPACING_RANGE_MM, RESCALE_INTERCEPT_RANGE, RESCALE_SLOPE_RANGE)


def attr_text(ds, name: str) -> str:
    """Attribute ``name`` as stripped text; ``""`` when missing, empty or not convertible by pydicom."""
    try:
        value = ds.get(name, "")
        if isinstance(value, pydicom.multival.MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value if value is not None else "").strip()
    except Exception:  # noqa: BLE001 - pydicom raises converting a raw value it cannot parse
        return ""


def attr_numbers(ds, name: str, count: int) -> np.ndarray | None:
    """The ``count`` values of attribute ``name`` as finite floats, or None (missing, empty, not numeric,
    another count, NaN or inf)."""
    try:
        raw = ds.get(name)
    except Exception:  # noqa: BLE001 - pydicom raises converting a raw value it cannot parse (wrong length)
        return None
    if raw is None or raw == "":
        return None
    try:
        values = [float(v) for v in (raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw])]
    except (TypeError, ValueError):
        return None
    arr = np.asarray(values, float)
    return arr if arr.shape == (count,) and np.all(np.isfinite(arr)) else None


def attr_raw(ds, name: str) -> str:
    """The attribute's value as written in the file, for an error message (``missing`` when absent)."""
    if name not in ds:
        return "missing"
    value = ds.get_item(name).value  # the raw element: the bytes as written, even where pydicom cannot parse them
    if value is None or value == "" or value == b"":
        return "empty"
    if isinstance(value, bytes):  # printable on one line: control bytes escaped
        value = value.decode("latin-1").strip().encode("unicode_escape").decode("ascii")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(map(str, value))
    return f"'{value}'"


def attr_int(ds, name: str) -> int | None:
    """An integer attribute (US, SS, IS) as an int; None when missing, empty, not one integer or unreadable."""
    try:
        value = ds.get(name)
    except Exception:  # noqa: BLE001 - pydicom raises on a raw value it cannot convert
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        text = str(value).strip()
        return int(text) if text.lstrip("-").isdigit() else None
    except (TypeError, ValueError):
        return None


def attr_float(ds, name: str) -> float | None:
    """A one-number attribute (DS, IS) as a finite float; None when missing, empty, not one number or not finite."""
    values = attr_numbers(ds, name, 1)
    return None if values is None else float(values[0])


def check_dicom_header(ds, path: str | Path) -> None:
    """Check the geometry and rescale attributes of one CT slice before they are used.

    Checked (DICOM PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.8.2.1 CT
    Image): ImageOrientationPatient (6 finite numbers, two unit vectors at right
    angles, within 0.05), ImagePositionPatient (3 finite numbers), PixelSpacing
    (2 finite numbers in :data:`PIXEL_SPACING_RANGE_MM`), Rows and Columns
    (1 to :data:`MAX_MATRIX`, and, for an uncompressed transfer syntax, no more
    pixels than the file holds), PhotometricInterpretation (MONOCHROME1 or MONOCHROME2),
    when present RescaleSlope and RescaleIntercept (finite, in
    :data:`RESCALE_SLOPE_RANGE` and :data:`RESCALE_INTERCEPT_RANGE`), the SOP
    class (one of :data:`CT_STORAGE_CLASSES`; the file meta's when the dataset
    has none) and the pixel description (SamplesPerPixel 1, BitsAllocated 8, 16
    or 32, BitsStored at most that, HighBit = BitsStored - 1,
    PixelRepresentation 0 or 1; PS3.3 C.7.6.3). A missing or impossible value
    is never replaced by a default.

    Parameters
    ----------
    ds : pydicom.Dataset
        The slice's header.
    path : str or Path
        The slice file, named in the error.

    Raises
    ------
    InvalidInputError
        Naming the file, the attribute and the value found.
    """
    def bad(name: str, why: str):
        raise InvalidInputError(f"{name} {attr_raw(ds, name)} {why}", path)

    iop = attr_numbers(ds, "ImageOrientationPatient", 6)
    if iop is None:
        bad("ImageOrientationPatient", "is not 6 finite numbers")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.05 or abs(np.linalg.norm(col) - 1) > 0.05 or abs(row @ col) > 0.05:
        bad("ImageOrientationPatient", "is not two unit vectors at right angles")
    if attr_numbers(ds, "ImagePositionPatient", 3) is None:
        bad("ImagePositionPatient", "is not 3 finite numbers")
    spacing = attr_numbers(ds, "PixelSpacing", 2)
    lo, hi = PIXEL_SPACING_RANGE_MM
    if spacing is None or np.any(spacing < lo) or np.any(spacing > hi):
        bad("PixelSpacing", f"is not 2 pixel sizes of {lo:g}-{hi:g} mm (no default is assumed)")
    for name in ("Rows", "Columns"):
        if not 0 < (attr_int(ds, name) or 0) <= MAX_MATRIX:
            bad(name, f"is not a number of pixels of 1 to {MAX_MATRIX}")
    if attr_text(ds, "PhotometricInterpretation").upper() not in ("MONOCHROME1", "MONOCHROME2"):
        bad("PhotometricInterpretation", "is not MONOCHROME1 or MONOCHROME2 (a CT image is greyscale)")
    for name, (lo, hi) in (("RescaleSlope", RESCALE_SLOPE_RANGE), ("RescaleIntercept", RESCALE_INTERCEPT_RANGE)):
        if name in ds:
            value = attr_numbers(ds, name, 1)
            if value is None or not lo <= value[0] <= hi:
                bad(name, f"is not a number of {lo:g} to {hi:g}")
    sop_class = attr_text(ds, "SOPClassUID") or attr_text(getattr(ds, "file_meta", {}), "MediaStorageSOPClassUID")
    if sop_class not in CT_STORAGE_CLASSES:
        # GDCM reads the geometry and rescale of the CT classes only: another class gets a 1 mm pixel silently
        bad("SOPClassUID", f"is not CT Image Storage ({CT_STORAGE_CLASSES[0]})")
    pixel = {name: attr_int(ds, name) for name in ("SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                                                        "PixelRepresentation")}
    if pixel["SamplesPerPixel"] != 1:
        bad("SamplesPerPixel", "is not 1 (a CT image has one sample per pixel)")
    if pixel["BitsAllocated"] not in (8, 16, 32):
        bad("BitsAllocated", "is not 8, 16 or 32")
    if pixel["BitsStored"] is None or not 1 <= pixel["BitsStored"] <= pixel["BitsAllocated"]:
        bad("BitsStored", f"is not 1 to BitsAllocated ({pixel['BitsAllocated']})")
    if pixel["HighBit"] != pixel["BitsStored"] - 1:
        bad("HighBit", f"is not BitsStored - 1 ({pixel['BitsStored'] - 1}; DICOM PS3.5 8.1.1)")
    if pixel["PixelRepresentation"] not in (0, 1):
        bad("PixelRepresentation", "is not 0 (unsigned) or 1 (two's complement)")
    if "PixelPaddingValue" in ds and attr_int(ds, "PixelPaddingValue") is None:
        bad("PixelPaddingValue", "is not one integer")
    syntax = attr_text(getattr(ds, "file_meta", {}), "TransferSyntaxUID")
    if syntax in NATIVE_TRANSFER_SYNTAXES:  # uncompressed: the file must hold every pixel
        need = attr_int(ds, "Rows") * attr_int(ds, "Columns") * pixel["BitsAllocated"] // 8
        if os.path.getsize(path) < need:
            raise InvalidInputError(f"Rows x Columns ({attr_int(ds, 'Rows')} x {attr_int(ds, 'Columns')}) "
                                    f"need {need} bytes of pixel data, the file holds {os.path.getsize(path)} in all",
                                    path)



class KvpReading(NamedTuple):
    """The tube voltage read from a header (:func:`header_kvp`).

    Attributes
    ----------
    kvp : float or None
        kV; None when the header has no usable KVP.
    note : str or None
        Why a KVP that is present was not used; None otherwise.
    """

    kvp: float | None
    note: str | None


def header_kvp(ds, path: str | Path) -> KvpReading:
    """The tube voltage of a header, or None with the reason when it is missing or impossible.

    A KVP outside :data:`KVP_RANGE` (NaN, 1e9, text) is not used: the
    calibration then treats the kVp as unknown, as for a NIfTI, and the note
    says so (``--kvp`` gives the right value).

    Returns
    -------
    KvpReading
        ``kvp`` (kV or None) and ``note`` (why a KVP that is present was not used, or None).
    """
    if ds.get("KVP") in (None, ""):
        return KvpReading(None, None)
    value = attr_numbers(ds, "KVP", 1)
    lo, hi = KVP_RANGE
    if value is None or not lo <= value[0] <= hi:
        return KvpReading(None, f"KVP {attr_raw(ds, 'KVP')} in {Path(path).name} is not a tube voltage of "
                                f"{lo:g}-{hi:g} kV; not used")
    return KvpReading(float(value[0]), None)
