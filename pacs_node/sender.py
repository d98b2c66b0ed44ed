"""Sends processed studies' new series to the destination (C-STORE SCU), retrying with backoff until it accepts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.status import code_to_category

from .config import NodeConfig
from .spool import Spool, SpooledStudy

logger = logging.getLogger(__name__)


class SendError(Exception):
    """The destination did not take a series: why."""


class Sender:
    """Sends each outbox study's series, the same files every time, so that a send repeated after a failure or a
    restart gives the destination instances it may already have, under the same UIDs (a PACS keeps one copy).
    A failed send is retried after ``retry_seconds``, doubling up to ``retry_max_seconds``; the study stays in the
    outbox until it is sent or the operator removes it. Once sent, it moves to ``done``."""

    def __init__(self, config: NodeConfig, spool: Spool) -> None:
        self.config, self.spool = config, spool

    def step(self) -> bool:
        """Sends the studies due; False when none was due."""
        due = [s for s in self.spool.studies("outbox") if s.record.get("next_attempt", 0) <= time.time()]
        for study in due:
            self.attempt(study)
        return bool(due)

    def attempt(self, study: SpooledStudy) -> None:
        """One attempt at sending the study's series; records its outcome."""
        attempts = study.record.get("attempts", 0) + 1
        files = study.files("output")
        try:
            send(files, self.config)
        except Exception as e:  # SendError, or a file the operator removed meanwhile: try again later
            reason = str(e) if isinstance(e, SendError) else f"{type(e).__name__}: {e}"
            wait = min(self.config.retry_seconds * 2 ** (attempts - 1), self.config.retry_max_seconds)
            self.spool.update(study, attempts=attempts, next_attempt=time.time() + wait, last_error=reason)
            logger.warning(
                f"study {study.uid}: sending to {self.config.destination} failed (attempt {attempts}): {reason}; "
                f"next attempt in {wait:g} s"
            )
            return
        self.spool.move(study, "done", attempts=attempts, sent=time.time(), next_attempt=None, last_error=None)
        logger.info(f"study {study.uid}: {len(files)} instances sent to {self.config.destination}")


def send(files: list[Path], config: NodeConfig) -> None:
    """C-STOREs ``files`` (DICOM files) to ``config.destination`` in one association; raises SendError naming the
    first file not taken, or the association's failure."""
    destination = config.destination
    ae = AE(config.ae_title)
    config.set_timeouts(ae)
    contexts = {}
    for file in files:
        meta = read_file_meta_info(file)
        contexts.setdefault(meta.MediaStorageSOPClassUID, set()).add(meta.TransferSyntaxUID)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    tls = (config.tls.client_context(), destination.host) if config.tls else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls)
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "not established (no connection, TLS refused, or aborted)"
        raise SendError(f"association with {destination} {how}")
    try:
        for file in files:
            status = assoc.send_c_store(file)
            code = status.get("Status")
            if code is None or code_to_category(code) not in ("Success", "Warning"):
                what = "no answer (association aborted)" if code is None else f"status 0x{code:04X}"
                raise SendError(f"{file} not stored: {what}")
    finally:
        if assoc.is_established:
            assoc.release()
