"""The spool: received studies and their results on disk, one folder per study, its state the folder it is in.

    SPOOL/incoming/<StudyInstanceUID>/input/<SOPInstanceUID>.dcm   being received
    SPOOL/queue/<job>/input/...                                     complete, to be processed
    SPOOL/outbox/<job>/{input, output/<SeriesInstanceUID>/*.dcm}    processed, to be sent
    SPOOL/done/<job>/...                                            sent
    SPOOL/failed/<job>/...                                          could not be processed (job.json says why)
    SPOOL/tmp/, SPOOL/work/                                         scratch, emptied at start
    SPOOL/node.lock                                                 held by the node serving the spool

A job is named ``<time it was complete>_<StudyInstanceUID>``; its ``job.json`` records what happened to it. Every
change is a write to a new file or folder followed by a rename, and both are flushed to disk first, so a kill (or
a power cut) at any point leaves every study in one state: restarted, the node resumes each from there. A study in
``queue`` is processed again from its input (nothing of it was sent); one in ``outbox`` is sent again from the same
files, whose UIDs the PACS already knows if it received them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)
STATES = ("incoming", "queue", "outbox", "done", "failed")
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
REFUSED = "refused.txt"  # in an incoming study: why its instances are refused (the study then fails)


class StudyTooLarge(Exception):
    """An instance would make its study larger than the limit."""


def check_uid(uid: str, what: str) -> str:
    """A UID safe to name a file: digits and dots, at most 64 characters."""
    uid = str(uid).strip().rstrip("\0")
    if len(uid) > 64 or not UID.fullmatch(uid):
        raise ValueError(f"invalid {what} {uid!r}")
    return uid


def flush(path: Path) -> None:
    """Flushes a file, or a folder's entries (a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_tree(folder: Path) -> None:
    """Flushes every file and folder under ``folder`` (written by another process, e.g. the deploy app) to disk."""
    for path in [*folder.rglob("*"), folder]:
        flush(path)


def scratch_file(data: bytes, scratch: Path) -> Path:
    """A new file in ``scratch`` holding ``data``, flushed to disk."""
    tmp = scratch / f"{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def place(tmp: Path, path: Path) -> None:
    """Renames a flushed file into place and flushes its folder."""
    os.replace(tmp, path)
    flush(path.parent)


def write_file(path: Path, data: bytes, scratch: Path) -> None:
    """Writes ``path`` whole or not at all: into ``scratch`` first, then renamed into place."""
    place(scratch_file(data, scratch), path)


def rename(source: Path, target: Path) -> None:
    """Moves a file or folder (same file system) and flushes both folders."""
    os.rename(source, target)
    flush(target.parent)
    flush(source.parent)


@dataclass(frozen=True)
class SpooledStudy:
    """A study's folder in the spool: its name is the job name the commands take (the incoming study's UID while
    it is received), the folder it is in its state."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.path.parent.name

    @property
    def uid(self) -> str:
        """Its Study Instance UID."""
        return self.name.rpartition("_")[2]

    @property
    def record(self) -> dict[str, Any]:
        """What happened to the study (job.json), or {} before it has one."""
        file = self.path / "job.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def files(self, part: str) -> list[Path]:
        """The files under ``input`` or ``output``, sorted."""
        return sorted(p for p in (self.path / part).rglob("*") if p.is_file())


class Spool:
    """The spool at ``root``. Receiving (``store``) may run in many threads at once; the other changes are each
    made by one thread of the node (sealing, processing, sending) or by the operator's commands."""

    def __init__(self, root: Path, quiet_seconds: float = 30.0, max_study_bytes: float = float("inf")) -> None:
        self.root = Path(root)
        self.quiet_seconds, self.max_study_bytes = quiet_seconds, max_study_bytes
        for name in (*STATES, "tmp", "work"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.opened = time.time()  # a restart gives every incoming study a full quiet time to be completed
        self.sizes = {s.uid: sum(p.stat().st_size for p in s.files("input")) for s in self.studies("incoming")}

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def claim(self) -> IO[str]:
        """Locks the spool for one serving node; the lock goes with the returned file, closed when the process
        ends, however it ends. Raises ValueError if another node serves this spool."""
        lock = open(self.root / "node.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ValueError(f"spool {self.root} is served by another node already") from None
        return lock

    def clear_scratch(self) -> None:
        """Empties tmp/ and work/ (partial files and runs of a node that was stopped): only at start."""
        for folder in (self.tmp, self.work):
            shutil.rmtree(folder)
            folder.mkdir()

    def studies(self, state: str) -> list[SpooledStudy]:
        """The studies in ``state``, oldest first."""
        return [SpooledStudy(p) for p in sorted((self.root / state).iterdir()) if p.is_dir()]

    def find(self, name: str) -> SpooledStudy:
        """The study whose job (or, incoming, whose UID) is ``name``, in whatever state it is."""
        for state in STATES:
            if (self.root / state / name).is_dir():
                return SpooledStudy(self.root / state / name)
        raise ValueError(f"no job {name!r} in spool {self.root}")

    # receiving

    def store(self, study: str, instance: str, data: bytes) -> Path:
        """Writes one received instance (a DICOM file's bytes) to its study in ``incoming``, durably; returns its
        path. Raises ValueError for UIDs that cannot name a file, StudyTooLarge if the study would pass the limit
        (the study is then marked refused, and fails once complete)."""
        study, instance = check_uid(study, "Study Instance UID"), check_uid(instance, "SOP Instance UID")
        folder = self.root / "incoming" / study
        tmp = scratch_file(data, self.tmp)  # outside the lock: associations write in parallel
        with self.lock:
            (folder / "input").mkdir(parents=True, exist_ok=True)
            path, refused = folder / "input" / f"{instance}.dcm", folder / REFUSED
            size = self.sizes.get(study, 0) + len(data) - (path.stat().st_size if path.is_file() else 0)
            if refused.is_file() or size > self.max_study_bytes:
                tmp.unlink()
                if not refused.is_file():
                    limit = self.max_study_bytes / 2**20
                    reason = f"the study is larger than max_study_mb ({limit:g} MB): instances refused"
                    write_file(refused, reason.encode(), self.tmp)
                    logger.error(f"study {study}: {reason}")
                raise StudyTooLarge(refused.read_text())
            place(tmp, path)  # an instance received again replaces the first copy
            self.sizes[study] = size
        return path

    def seal_quiet(self) -> list[SpooledStudy]:
        """Moves the incoming studies quiet for ``quiet_seconds`` to ``queue`` (``failed`` if refused)."""
        sealed, now = [], time.time()
        with self.lock:
            for study in self.studies("incoming"):
                if now - max((study.path / "input").stat().st_mtime, self.opened) < self.quiet_seconds:
                    continue
                instances = len(study.files("input"))
                name = f"{datetime.now():%Y%m%d-%H%M%S-%f}_{study.name}"
                record = {"study": study.name, "instances": instances, "complete": now}
                refused = study.path / REFUSED
                if refused.is_file():
                    record["error"] = refused.read_text()
                self.write_record(study, record)
                state = "failed" if refused.is_file() else "queue"
                rename(study.path, self.root / state / name)
                self.sizes.pop(study.name, None)
                sealed.append(SpooledStudy(self.root / state / name))
                logger.info(f"study {study.name}: complete with {instances} instances, {state} as {name}")
        return sealed

    # the states after receiving

    def write_record(self, study: SpooledStudy, record: dict[str, Any]) -> None:
        write_file(study.path / "job.json", json.dumps(record, indent=1).encode(), self.tmp)

    def update(self, study: SpooledStudy, **values: Any) -> dict[str, Any]:
        """Adds ``values`` to the study's record (None removes a key); returns the record."""
        record = {k: v for k, v in {**study.record, **values}.items() if v is not None}
        self.write_record(study, record)
        return record

    def move(self, study: SpooledStudy, state: str, **values: Any) -> SpooledStudy:
        """Records ``values``, then moves the study to ``state``."""
        if values:
            self.update(study, **values)
        target = self.root / state / study.name
        rename(study.path, target)
        return SpooledStudy(target)

    def remove(self, study: SpooledStudy) -> None:
        """Deletes a study (the operator's choice): renamed into work/ first, so it is gone at once."""
        trash = self.work / f"removed-{uuid.uuid4().hex}"
        with self.lock:
            rename(study.path, trash)
            self.sizes.pop(study.name, None)
        shutil.rmtree(trash)
