"""Volume files (NIfTI, NRRD, MetaImage): format by name, completeness and NIfTI header checks, reading.

SimpleITK reads the voxels; the checks before it catch what it would read
wrongly without a word (a truncated file zero-filled, NaN turned into 0, a
qform and sform that disagree).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ctbmd.errors import InvalidInputError
from ctbmd.io.limits import RESCALE_INTERCEPT_RANGE, RESCALE_SLOPE_RANGE
from ctbmd.io.quiet import quiet_libraries

#: Volume formats by file-name suffix (case-insensitive; the longest suffix wins).
_VOLUME_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
                    ".mha": "mha", ".mhd": "mha"}


def volume_format(path: str | Path) -> str | None:
    """The volume format of a file name: ``nifti``, ``nrrd`` or ``mha`` (:data:`_VOLUME_SUFFIXES`), or None."""
    name = Path(path).name.lower()
    for suffix, fmt in sorted(_VOLUME_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


def _check_complete(path: Path) -> None:
    """Raise InvalidInputError for a truncated gzip stream or a NIfTI shorter than its header says.

    SimpleITK zero-fills some truncated files instead of failing, so this is checked first.
    A ``.nii.gz`` whose gzip trailer gives the uncompressed size its NIfTI header needs
    (:func:`_gzip_size_matches`, a few milliseconds) is complete; any other ``.gz`` is
    decompressed once to the end, which also checks its CRC. Corruption inside a
    complete stream is left to SimpleITK's own decoder.
    """
    name = path.name.lower()
    if name.endswith(".nii.gz") and _gzip_size_matches(path):
        return
    size = path.stat().st_size
    if name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise InvalidInputError(f"truncated or corrupt gzip data ({exc})", path) from None
    if name.endswith((".nii", ".nii.gz")):
        try:
            need = _nifti_bytes_needed(path)
        except Exception as exc:  # noqa: BLE001 - any header failure is a corrupt file
            raise InvalidInputError(f"corrupt NIfTI header ({exc})", path) from None
        if size < need:
            raise InvalidInputError(f"truncated NIfTI: {size} bytes, its header (dim, datatype, vox_offset) needs "
                                    f"{need}", path)


def _nifti_bytes_needed(path: Path) -> int:
    """Bytes a NIfTI file (uncompressed) must hold by its header: ``vox_offset + nvoxels * itemsize``."""
    img = nib.load(path)
    return int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize


def _gzip_size_matches(path: Path) -> bool:
    """True when a ``.nii.gz`` file's gzip trailer holds the size its NIfTI header needs.

    The last 4 bytes of a gzip stream give its uncompressed size modulo 2**32
    (ISIZE, RFC 1952 section 2.3.1); a truncated stream ends in compressed data
    instead, which matches by chance with probability 2**-32. The header needs
    ``vox_offset + nvoxels * itemsize`` bytes. Any doubt (an unreadable header, a
    multi-member file, trailing bytes) returns False, and the caller decompresses
    the whole stream.
    """
    try:
        need = _nifti_bytes_needed(path)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = int.from_bytes(fh.read(4), "little")
    except Exception:  # noqa: BLE001 - any failure means: check the slow way
        return False
    return isize == need % (1 << 32)


def _raw_vox_offset(path: Path, endianness: str) -> float | None:
    """The vox_offset field (bytes 108-111) as written in a NIfTI-1 file, or None when unreadable."""
    import struct

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(112)
        return struct.unpack(endianness + "f", head[108:112])[0]
    except (OSError, EOFError, struct.error, zlib.error):
        return None


def _check_nifti(path: Path) -> None:
    """Refuse a NIfTI whose two orientations disagree, or a float NIfTI holding NaN or infinite voxels.

    A NIfTI header carries two voxel-to-world transforms, the qform and the
    sform. When both are set (code > 0) and point the axes different ways
    (other axis codes, e.g. RAS against LAS), readers disagree on which to use
    (ITK and nibabel take the sform, others the qform): the patient's left or
    feet depend on the program. ITK's NIfTI reader turns NaN into 0 without a
    word (0 HU, soft tissue), so the file is read with nibabel first. Integer
    NIfTI (most CT) cannot hold NaN and its voxels are not read twice.

    Also checked: vox_offset as written (at least 352 in a single-file
    NIfTI-1; nibabel shows it as 0 once loaded), pixdim (3 positive finite
    voxel sizes), the sform's voxel
    sizes against pixdim (within 1%: ITK falls back to the qform when they
    differ, other programs do not), and scl_slope/scl_inter (a slope of 0 or
    NaN means no scaling, NIfTI-1; any other slope must be a CT rescale).

    Raises
    ------
    InvalidInputError
        The qform and sform disagree; a broken pixdim, sform or rescale; or NaN
        or infinite voxels.
    """
    try:
        with quiet_libraries():
            image = nib.load(str(path))
        header = image.header
        pixdim = np.asarray(header["pixdim"][1:4], float)
    except Exception:  # noqa: BLE001 - ITK reports unreadable files with its own message
        return
    offset = _raw_vox_offset(path, header.endianness)
    if bytes(header["magic"]).startswith(b"n+1") and offset is not None and not offset >= 352:
        raise InvalidInputError(f"the NIfTI header's vox_offset {offset:g} lies inside the header: a single-file "
                                "NIfTI-1's voxels start at byte 352 or later (readers differ on where)", path)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InvalidInputError(f"the NIfTI header's pixdim {np.round(pixdim, 4).tolist()} is not 3 positive voxel "
                                "sizes", path)
    try:
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        q_axes = nib.aff2axcodes(qform) if qform is not None and int(qcode) > 0 else None
        s_axes = nib.aff2axcodes(sform) if sform is not None and int(scode) > 0 else None
    except Exception:  # noqa: BLE001 - a transform nibabel cannot use (NaN, singular)
        raise InvalidInputError("the NIfTI header's qform or sform is not a usable transform (NaN, infinite or "
                                "singular)", path) from None
    if s_axes is not None:
        columns = np.linalg.norm(np.asarray(sform)[:3, :3], axis=0)
        if not np.all(np.isfinite(columns)) or not np.allclose(columns, pixdim, rtol=0.01):
            raise InvalidInputError(
                f"the NIfTI header's sform gives voxels of {np.round(columns, 4).tolist()} mm and its pixdim "
                f"{np.round(pixdim, 4).tolist()} mm: programs disagree on the voxel size; rewrite the file", path)
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and np.isfinite(slope) and not (RESCALE_SLOPE_RANGE[0] <= slope <= RESCALE_SLOPE_RANGE[1]
                                                  and np.isfinite(inter) and RESCALE_INTERCEPT_RANGE[0] <= inter
                                                  <= RESCALE_INTERCEPT_RANGE[1]):
        raise InvalidInputError(f"the NIfTI header's scl_slope {slope:g} and scl_inter {inter:g} are not a CT "
                                f"rescale (slope {RESCALE_SLOPE_RANGE[0]:g}-{RESCALE_SLOPE_RANGE[1]:g}, intercept "
                                f"{RESCALE_INTERCEPT_RANGE[0]:g} to {RESCALE_INTERCEPT_RANGE[1]:g})", path)
    if q_axes is not None and s_axes is not None and q_axes != s_axes:
        raise InvalidInputError(
            f"the NIfTI header's qform ({''.join(str(a) for a in q_axes)}) and sform "
            f"({''.join(str(a) for a in s_axes)}) orient the axes differently: programs disagree on which is "
            "the patient's left, front or head; rewrite the file with one orientation", path)
    if image.get_data_dtype().kind != "f":
        return
    data = np.asanyarray(image.dataobj)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InvalidInputError(f"{bad} of {data.size} voxels are NaN or infinite: a CT in HU has only finite "
                                "values (a float volume with missing data?)", path)


def read_volume_file(path: Path) -> sitk.Image:
    """Read a volume file with SimpleITK after checking that it is complete (and, for NIfTI, its header).

    Parameters
    ----------
    path : Path
        A ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.

    Returns
    -------
    SimpleITK.Image
        As stored (not reoriented), in the file's pixel type.

    Raises
    ------
    InvalidInputError
        A truncated or corrupt file, a NIfTI header that readers disagree on
        (:func:`_check_nifti`), or a file SimpleITK cannot read.
    """
    _check_complete(path)  # before ITK allocates what a corrupt header declares
    if volume_format(path) == "nifti":
        _check_nifti(path)
    try:
        with quiet_libraries():
            return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        hint = next((line.strip() for line in detail if "rror" in line and "itk::" not in line), "")
        raise InvalidInputError(
            f"cannot read image: the file is corrupt, truncated or not a {volume_format(path)} volume"
            + (f" ({hint[:120]})" if hint else ""), path) from None
