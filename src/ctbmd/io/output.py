"""Output folders and files written atomically: checks before a run, a lock, staging, the swap into place.

A run writes its whole result into a hidden staging folder beside the output
folder and then swaps it into place (:func:`replace_dir`), so the output
folder never mixes two runs; single files are written through a temporary
sibling (:func:`write_atomic`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk

from ctbmd.errors import UsageError

#: The process's umask, read once at import (reading it means setting it, which is not safe once threads run).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


#: Infixes of the hidden siblings of an output folder ``OUT``: ``.OUT.ctbmd-staging-XXXX`` (the new
#: folder being written), ``.OUT.ctbmd-old-XXXX`` (the earlier result, while it is swapped out) and
#: ``.OUT.ctbmd-lock`` (held while a run writes into ``OUT``).
STAGING_INFIX, OLD_INFIX, LOCK_INFIX = ".ctbmd-staging-", ".ctbmd-old-", ".ctbmd-lock"


def check_output_dir(path: str | Path, result_files: Sequence[str] = ()) -> Path:
    """Check, before any analysis, that ``path`` can become an output folder.

    It may exist as a writable folder that is empty or holds only an earlier
    result (files named in ``result_files``, which a run replaces whole), or
    not exist under a writable folder (it is then created later). Checked with
    ``os.access``, so it also holds for a read-only mount.

    Parameters
    ----------
    path : str or Path
        The output folder.
    result_files : sequence of str
        Names of the files a run writes; with none given, the content of an
        existing folder is not checked.

    Returns
    -------
    Path
        ``path`` made absolute with symlinks resolved (``os.path.realpath``):
        the folder a run replaces. Use it for :func:`output_lock` and
        :func:`ctbmd.report.write_outputs`.

    Raises
    ------
    UsageError
        ``path`` is a file, lies under a file, or it or its nearest existing
        parent cannot be written; it is the root folder or a mount point (a
        rename cannot replace it); or it holds files that are not an earlier
        result, which replacing it would delete (exit 2), with the reason.
    """
    given = path
    path = Path(os.path.realpath(path))  # a symlink's target, "." and ".." by name: the folder that is replaced
    if path.parent == path:
        raise UsageError("is the root folder: give a folder to hold the result", given)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == path and path.is_dir() and (os.path.ismount(path) or path.stat().st_dev != path.parent.stat().st_dev):
        raise UsageError("is a mount point: a run replaces its output folder whole by renaming a new one into its "
                         "place, which a mount point cannot take; give a folder inside it", given)
    if probe.exists() and not probe.is_dir():
        raise UsageError("is a file, not a folder" if probe == path else f"lies under {probe}, which is a file",
                         path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError("cannot be written (no permission)" if probe == path
                         else f"cannot be created: {probe} cannot be written (no permission)", path)
    if probe == path and result_files:
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot be replaced: its parent {path.parent} cannot be written (no permission)", path)
        foreign = sorted(f.name for f in path.iterdir() if f.name not in result_files)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UsageError(f"holds files that are not a ctbmd result ({shown}); a run replaces its output "
                             "folder whole, so give a new or empty folder", path)
    return path


@contextlib.contextmanager
def output_lock(path: str | Path):
    """Hold an exclusive lock on output folder ``path`` while a run writes it.

    The lock is ``fcntl.flock`` on the hidden sibling ``.<name>.ctbmd-lock``,
    released when the block ends or the process dies (also by SIGKILL). The
    lock file itself stays (removing it would race with a waiting run).

    Parameters
    ----------
    path : str or Path
        The output folder (resolved, :func:`check_output_dir`); its parent is
        created when missing.

    Yields
    ------
    Path
        ``path``.

    Raises
    ------
    UsageError
        Another run holds the lock (exit 2).
    """
    import fcntl  # POSIX only: imported here, so that reading and analysing work elsewhere too

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}{LOCK_INFIX}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError("another ctbmd run is writing into this folder; wait for it or give another "
                             "`out_dir`", path) from None
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def staging_dir(path: str | Path) -> Path:
    """Make the hidden staging folder for output folder ``path``, beside it (same file system).

    Its mode follows the umask (0755 under umask 022), since it becomes ``path``.

    Parameters
    ----------
    path : str or Path
        The output folder.

    Returns
    -------
    Path
        ``<parent>/.<name>.ctbmd-staging-XXXX``, created empty.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{STAGING_INFIX}", dir=path.parent))
    os.chmod(staging, 0o777 & ~_UMASK)
    return staging


def clean_stale(path: str | Path) -> list[str]:
    """Remove what an interrupted run left beside output folder ``path``; call it holding :func:`output_lock`.

    Staging folders (``.<name>.ctbmd-staging-*``) are deleted. A swapped-out
    earlier result (``.<name>.ctbmd-old-*``) is deleted when ``path`` exists,
    and put back as ``path`` when it does not (a run killed between the two
    renames of :func:`replace_dir`'s fallback).

    Parameters
    ----------
    path : str or Path
        The output folder (resolved). Its name is matched literally, not as a
        glob pattern.

    Returns
    -------
    list of str
        One line per thing removed or restored.
    """
    path = Path(path)
    done = []
    if not path.parent.is_dir():
        return done
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}{OLD_INFIX}*")):
        if not path.exists():
            os.rename(leftover, path)
            done.append(f"restored the earlier result {path} from {leftover.name} (an interrupted run)")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover.name} (an interrupted run)")
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}{STAGING_INFIX}*")):
        if leftover.is_symlink():
            leftover.unlink()
        else:
            shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name} (an interrupted run)")
    return done


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one ``renameat2(RENAME_EXCHANGE)`` call (Linux 3.15+); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(staging: str | Path, path: str | Path) -> None:
    """Put the complete folder ``staging`` in place of ``path``, whole, so ``path`` never mixes two runs.

    A missing ``path`` is created by one rename. An existing one is swapped
    with ``staging`` by one ``renameat2(RENAME_EXCHANGE)`` and the earlier
    content, now in ``staging``'s place, is deleted: a process killed at any
    point leaves either the earlier folder or the new one at ``path``. Where
    the exchange is not supported (not Linux, some network file systems) the
    earlier folder is first renamed to ``.<name>.ctbmd-old-*``; a kill between
    the two renames leaves ``path`` missing and the earlier result whole there,
    which :func:`clean_stale` puts back on the next run.

    Parameters
    ----------
    staging : str or Path
        The complete new folder, on the same file system as ``path``.
    path : str or Path
        The output folder to replace (resolved; not a mount point).

    Raises
    ------
    OSError
        A rename fails (the earlier folder is then left in place).
    """
    staging, path = Path(staging), Path(path)
    if not path.exists():
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = path.parent / f".{path.name}{OLD_INFIX}{os.getpid()}"
    os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` so no half-written file remains.

    The file's mode follows the process's umask (0644 under umask 022), as a
    plain ``open`` would give it.

    Parameters
    ----------
    path : str or Path
        Final destination.
    writer : callable
        Called with the temporary path (same folder and suffix); must create it.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets what the umask allows
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write a SimpleITK image (compressed when the format allows) atomically."""
    return write_atomic(path, lambda p: sitk.WriteImage(image, str(p), useCompression=True))
