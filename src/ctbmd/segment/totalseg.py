"""Optional TotalSegmentator backend (``pip install ctbmd[totalseg]``).

Calls TotalSegmentator's Python API (``totalsegmentator.python_api.totalsegmentator``)
on the CT with the vertebra classes of task ``total`` only (``roi_subset``), on the
CPU unless CUDA is available, and converts the result to VerSe numbering.

TotalSegmentator looks for its weights in ``$TOTALSEG_WEIGHTS_PATH``, else
``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``;
an unzipped release zip there works offline. ctbmd checks that first, so an
offline machine gets a clear error instead of a failed download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctbmd.errors import BackendUnavailableError, require_optional
from ctbmd.segment.labelmaps import TOTAL_LEVELS, to_verse
from ctbmd.types import CTVolume

#: Vertebra classes requested from task ``total``.
ROI_SUBSET = [f"vertebrae_{name}" for name in TOTAL_LEVELS.values()] + ["sacrum"]


def weights_dir() -> Path:
    """Folder where TotalSegmentator keeps nnU-Net weights (see module docstring)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


def check_available() -> None:
    """Raise :class:`BackendUnavailableError` unless the package and its weights are installed."""
    require_optional(("totalsegmentator.python_api",), "the totalsegmentator backend", "pip install 'ctbmd[totalseg]'")
    folder = weights_dir()
    if not folder.is_dir() or not any(p.name.startswith("Dataset") for p in folder.iterdir()):
        raise BackendUnavailableError(
            f"TotalSegmentator weights not found in {folder}; this machine cannot download them. Unzip the "
            "release weights there, or point TOTALSEG_WEIGHTS_PATH at the folder that holds them")


def segment_totalsegmentator(ct: CTVolume, fast: bool = False) -> np.ndarray:
    """Run TotalSegmentator on ``ct`` and return vertebra labels (VerSe) on its canonical grid.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``ct.hu.shape``.

    Raises
    ------
    BackendUnavailableError
        Package or weights missing.
    """
    check_available()
    import nibabel as nib
    from totalsegmentator.python_api import totalsegmentator

    # nibabel wants RAS: flip the LPS affine's first two rows; the voxel order is unchanged.
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine_lps
    image = nib.Nifti1Image(ct.hu.astype(np.float32), affine_ras)
    result = totalsegmentator(image, None, task="total", roi_subset=ROI_SUBSET, fast=fast, ml=True, quiet=True)
    labels = np.asanyarray(result.dataobj).astype(np.uint16)
    return to_verse(labels, "total")
