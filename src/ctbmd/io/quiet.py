"""Keep what the image libraries print off stderr and in ctbmd's debug log."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import SimpleITK as sitk

log = logging.getLogger("ctbmd.io")  # the package's one logger: its name shows in messages

# ITK's own warnings (e.g. "unexpected scales in sform") would go to stderr; ctbmd checks those headers itself
sitk.ProcessObject.SetGlobalWarningDisplay(False)


@contextlib.contextmanager
def quiet_libraries(native: bool = True):
    """Keep what the readers print (niftilib's C messages, ITK, nibabel's logger, pydicom's warnings) off
    stderr, and put it in ctbmd's log at debug level (shown by ``--debug``).

    The C libraries write to file descriptor 2 itself, so with ``native`` (in
    the main thread only) it is pointed at a temporary file for the duration: a
    spinner drawn by another thread in that time is moved to the log with it,
    so keep such blocks to the C calls. In other threads (a batch worker's
    task) file descriptors are left alone, since the whole process shares them.

    Parameters
    ----------
    native : bool
        Also capture file descriptor 2 (C libraries), not only Python warnings
        and nibabel's logger.

    Yields
    ------
    None
    """
    import threading
    import warnings

    from nibabel.imageglobals import LoggingOutputSuppressor

    saved = None
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught, \
            LoggingOutputSuppressor():
        warnings.simplefilter("always")
        if native and threading.current_thread() is threading.main_thread():
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):
                saved = None
            if saved is not None:
                try:
                    os.dup2(sink.fileno(), 2)
                except OSError:
                    os.close(saved)
                    saved = None
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("reader messages: %s", " | ".join(text.splitlines())[:4000])
            for w in caught:
                log.debug("reader warning: %s: %s", w.category.__name__, w.message)
