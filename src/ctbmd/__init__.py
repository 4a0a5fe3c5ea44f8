"""ctbmd: opportunistic osteoporosis screening from routine CT.

Pipeline stages, one module each: :mod:`ctbmd.io` (read and validate CT),
:mod:`ctbmd.segment` (find and label vertebrae), :mod:`ctbmd.roi` (trabecular ROI
per vertebral body), :mod:`ctbmd.calibrate` (phantomless HU -> mg/cm3),
:mod:`ctbmd.classify` (ACR-QCT category, Pickhardt HU flags, contrast phase) and
:mod:`ctbmd.report` (result.json, levels.csv, NIfTI maps, report.png).
:mod:`ctbmd.pipeline` chains them; :mod:`ctbmd.cli` is the command line.

ctbmd is a research tool and not a medical device.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctbmd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
