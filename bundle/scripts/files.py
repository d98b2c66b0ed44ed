"""Files and folders written whole: a reader sees the old one or the new one, never a torn one.

Everything the bundle writes for others to read (model files, checkpoints, records, generated data sets) goes
through ``atomic_path`` (one file) or ``staged_folder`` (a folder): the content is written beside its target
under a hidden temporary name and renamed into place only once complete; on an error the temporary is removed
and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _usual_permissions(path: str, mode: int) -> None:
    """mkdtemp makes private folders; give ``path`` the permissions the umask gives new ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A hidden temporary file beside ``path``, ``.<name>`` (so with its extension: writers that go by the name,
    such as nibabel's, still work), that replaces ``path`` when the block ends without error and is removed
    otherwise. The name is fixed, so a rerun replaces what a killed run left behind."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before it takes the name
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` to ``path``, whole."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_json(content: Any, path: str) -> None:
    """JSON (indented) to ``path``, whole."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(content, f, indent=1)


@contextmanager
def staged_folder(out_dir: str) -> Iterator[str]:
    """An empty hidden folder beside ``out_dir`` that becomes ``out_dir`` when the block ends without error
    (an earlier ``out_dir`` is replaced only then) and is removed otherwise."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}-staging-", dir=parent)
    try:
        _usual_permissions(staging, 0o777)
        yield staging
        old = None
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}-old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "previous"))
        try:
            os.replace(staging, out_dir)
        except OSError:
            if old:
                os.replace(os.path.join(old, "previous"), out_dir)
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
