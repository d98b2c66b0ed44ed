"""Where a model came from: fingerprints of its training data and of the code that trained it.

The training run stores these in the model card (``ModelCard.provenance``) with its iterations, epochs, batch
size, seed, settings, training time and validation-loss curve; evaluation copies them beside its metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLE_DIR = os.path.dirname(SCRIPTS_DIR)


def _hash_file(digest, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def file_sha256(path: str) -> str:
    """SHA-256 of one file's bytes (e.g. a checkpoint)."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()


# the folder that holds the bundle (the repository, in a checkout)
BUNDLE_TOP = Path(__file__).resolve().parents[2]


def portable_path(path: str) -> str:
    """``path`` as a model card keeps it, free of the training machine's folders: relative to the folder that holds
    the bundle when it lies there (e.g. ``bundle/data/datalist_2d.json``), else its file name."""
    path, top = os.path.abspath(path), str(BUNDLE_TOP)
    return os.path.relpath(path, top) if path.startswith(top + os.sep) else os.path.basename(path)


def data_fingerprint(datalist: str, cases: Sequence[Mapping]) -> dict:
    """SHA-256 of the datalist file and of every image and label file of ``cases`` (DICOM folders file by file),
    in the cases' order: the same fingerprint means the same training data, byte for byte. The datalist is named
    by ``portable_path``."""
    digest = hashlib.sha256()
    for case in cases:
        for key in ("image", "label"):
            path = case.get(key)
            if not path:
                continue
            files = (
                [path]
                if os.path.isfile(path)
                else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
            )
            for file in files:
                digest.update(os.path.basename(file).encode())
                _hash_file(digest, file)
    listing = hashlib.sha256()
    _hash_file(listing, datalist)
    return {
        "datalist": portable_path(datalist),
        "datalist_sha256": listing.hexdigest(),
        "files_sha256": digest.hexdigest(),
        "num_cases": len(cases),
    }


def code_version() -> dict:
    """The bundle's version (metadata.json), the git commit of its checkout when there is one (``+dirty`` with
    uncommitted changes), and a SHA-256 over the bundle's Python code, which holds without git."""
    with open(os.path.join(BUNDLE_DIR, "configs", "metadata.json")) as f:
        version = json.load(f)["version"]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(SCRIPTS_DIR)):
        if name.endswith(".py"):
            digest.update(name.encode())
            _hash_file(digest, os.path.join(SCRIPTS_DIR, name))
    return {"bundle_version": version, "git_commit": _git_commit(), "scripts_sha256": digest.hexdigest()}


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", BUNDLE_DIR, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def training_provenance(datalist: str, cases: Sequence[Mapping], settings: Mapping) -> dict:
    """What a training run records in its card before its first step: the data, the code and the settings."""
    return {"data": data_fingerprint(datalist, cases), "code": code_version(), "settings": dict(settings)}
