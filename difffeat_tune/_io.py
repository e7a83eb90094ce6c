"""Atomic writes: a file or a folder appears whole under its name, or not at all.

Every writer of the package goes through :func:`atomic_write` (files) or :func:`atomic_folder`
(folders built in several steps). The temporary name is unique (``tempfile``), in the target's
own folder (so the final ``os.replace`` is a rename on one file system), and is removed on any
error: two concurrent writers never share a temporary file, and an interrupted write never leaves
a file that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object], *, mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` on a unique temporary sibling of ``path``, then rename it to ``path``.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the whole content to the path it is given (it may open it by name).
        mode: permissions of the new file (``tempfile`` creates 0600).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:  # the content is on disk before the name points at it
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, obj: object) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def atomic_folder(folder: str | Path, build: Callable[[Path], object]) -> Path:
    """Build a folder in a unique temporary sibling with ``build(tmp)``, then rename it to ``folder``.

    If another process published ``folder`` first (a concurrent build of the same content), its
    folder is kept and this build is dropped.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():  # not a lost race: a real failure
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
