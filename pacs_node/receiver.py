"""The node's DICOM service: C-ECHO and C-STORE SCP (pynetdicom) writing every instance to the spool before it is
acknowledged, for the configured callers only."""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from .config import NodeConfig
from .spool import Spool, StudyTooLarge

logger = logging.getLogger(__name__)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


class Receiver:
    """Accepts associations from ``config.callers`` (AE title, and address where one is given; others are
    rejected: calling AE title not recognised), at most ``config.max_associations`` at once, over TLS if
    configured; answers C-ECHO; stores each C-STORE's instance in the spool, then answers:

    - Success once the instance is on disk;
    - Out of Resources (A700) when its study passes ``max_study_mb``, or the disk is full;
    - Cannot Understand (C000) when the data cannot be decoded or lacks valid Study and SOP Instance UIDs.

    A problem with one instance is logged (caller and reason) and answered; the service goes on.
    """

    def __init__(self, config: NodeConfig, spool: Spool) -> None:
        self.config, self.spool = config, spool
        self.ae = AE(config.ae_title)
        self.ae.maximum_associations = config.max_associations
        config.set_timeouts(self.ae)
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    def start(self) -> ThreadedAssociationServer:
        """Starts serving in background threads; returns the server (``shutdown()`` stops it)."""
        handlers = [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.on_store),
        ]
        context = self.config.tls.server_context() if self.config.tls else None
        server = self.ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=context
        )
        tls = " over TLS" if context else ""
        logger.info(f"{self.config.ae_title} listening on {self.config.host}:{self.config.port}{tls}")
        return server

    def on_requested(self, event: evt.Event) -> None:
        """Rejects an association request from a caller not configured (permanent; calling AE not recognised)."""
        assoc = event.assoc
        title, address = assoc.requestor.primitive.calling_ae_title, assoc.requestor.address
        if not self.config.allows(title, address):
            logger.warning(f"association from {title!r} at {address} rejected: not a configured caller")
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.is_rejected = True  # as pynetdicom's own rejection: no negotiation follows
            assoc.kill()

    def on_store(self, event: evt.Event) -> int:
        """Writes the instance to the spool, then answers with its status."""
        caller = f"{event.assoc.requestor.ae_title} at {event.assoc.requestor.address}"
        instance = event.request.AffectedSOPInstanceUID
        try:
            ds = event.dataset
            path = self.spool.store(ds.StudyInstanceUID, ds.SOPInstanceUID, event.encoded_dataset())
        except StudyTooLarge as e:
            logger.warning(f"instance {instance} from {caller} refused: {e}")
            return OUT_OF_RESOURCES
        except OSError as e:
            logger.error(f"instance {instance} from {caller} could not be stored: {e}")
            return OUT_OF_RESOURCES
        except Exception as e:  # undecodable data, missing or invalid UIDs
            logger.warning(f"instance {instance} from {caller} refused: cannot understand it: {e}")
            return CANNOT_UNDERSTAND
        logger.debug(f"stored {path} from {caller}")
        return SUCCESS
