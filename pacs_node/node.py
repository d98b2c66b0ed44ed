"""The node: its DICOM service, processor and sender around one spool, until it is told to stop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from .config import NodeConfig
from .processor import Processor, Stopped
from .receiver import Receiver
from .sender import Sender
from .spool import Spool

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.5


def serve(config: NodeConfig) -> None:
    """Resumes whatever the spool holds, then receives, seals, processes and sends until SIGTERM or SIGINT.

    Threads: the DICOM service (one per association), the processor (one deploy app run at a time), the sender;
    this thread seals the studies that have gone quiet. A stop ends a running app run (its studies stay queued).
    """
    spool = Spool(config.spool, config.quiet_seconds, config.max_study_mb * 2**20)
    claim = spool.claim()
    spool.clear_scratch()
    pending = {state: len(spool.studies(state)) for state in ("incoming", "queue", "outbox")}
    logger.info(f"spool {spool.root}: resuming {pending}; results go to {config.destination}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = Receiver(config, spool).start()
    workers = [
        threading.Thread(target=repeat, args=(Processor(config, spool, stop).step, stop), name="processor"),
        threading.Thread(target=repeat, args=(Sender(config, spool).step, stop), name="sender"),
    ]
    for worker in workers:
        worker.start()
    repeat(lambda: bool(spool.seal_quiet()), stop)
    logger.info("stopping")
    server.shutdown()
    for worker in workers:
        worker.join()
    claim.close()
    logger.info("stopped")


def repeat(step: Callable[[], bool], stop: threading.Event) -> None:
    """Calls ``step`` until ``stop``, pausing when it had nothing to do; an error is logged and the loop goes on."""
    while not stop.is_set():
        try:
            busy = step()
        except Stopped:
            return
        except Exception:
            logger.exception(f"{threading.current_thread().name}: unexpected error, carrying on")
            busy = False
        if not busy:
            stop.wait(POLL_SECONDS)
