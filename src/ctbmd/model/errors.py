"""The model package's error: bad training or network settings, in Python terms.

:class:`ModelSettingsError` is a :class:`ctbmd.errors.UsageError` (the CLI
shows it as ``ctbmd: error: <reason>`` and exits 2) and also a
:class:`ValueError`, as the model functions raised for these cases before the
ctbmd error family reached them, so ``except ValueError`` callers keep working.
"""

from __future__ import annotations

from ctbmd.errors import UsageError


class ModelSettingsError(UsageError, ValueError):
    """Settings the model code cannot use (exit 2).

    Raised for an unknown network (``arch``, ``dims``), protocol or device, a
    device that is not there (CUDA), too few patients for the folds, a binary
    task without a threshold for its target, a training run resumed with
    other settings, or a muscle network given no muscle crops.
    """
