"""The SCP on the chosen engine: storage, verification and MPPS handlers, bound at start-up."""

from __future__ import annotations

import logging
import time

from pynetdicom import _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.assembly import InstanceRecorder
from dicom_listener.engines import Engine, start_fast, start_stock
from dicom_listener.mpps import ProcedureStepSCP
from dicom_listener.scp import Handler, StorageSCP, build_ae, build_ssl_context
from neurogate.settings import ListenerSettings
from neurogate.storage import InstanceStore

log = logging.getLogger(__name__)


def serve_scp(
    listener: ListenerSettings,
    engine: Engine,
    store: InstanceStore,
    tracker: InstanceRecorder,
    sessions: sessionmaker[Session],
) -> ThreadedAssociationServer:
    """Start the SCP (storage, verification, MPPS) on ``engine``; the server, accepting."""
    # pynetdicom's "standard" handlers format every PDU and DIMSE message for its INFO and
    # DEBUG logs while holding the AE-wide lock: needless serialisation of the associations
    # when those logs are off (neurogate.logging keeps pynetdicom at WARNING unless asked).
    pynetdicom_logs = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if pynetdicom_logs else "none"
    storage = StorageSCP(store, tracker, min_free_mb=listener.min_free_disk_mb)
    mpps = ProcedureStepSCP(sessions, tracker)
    handlers: list[Handler] = [
        *storage.handlers(),
        (evt.EVT_N_CREATE, mpps.on_n_create),
        (evt.EVT_N_SET, mpps.on_n_set),
    ]
    ae = build_ae(listener)
    address = (listener.host, listener.port)
    ssl_context = build_ssl_context(listener)
    if engine == "stock":
        return start_stock(
            ae,
            address,
            evt_handlers=handlers,
            ssl_context=ssl_context,
            chunked_receive=listener.chunked_receive,
        )
    return start_fast(
        ae,
        address,
        evt_handlers=handlers,
        ssl_context=ssl_context,
        store=storage.store_received,
        tmp_dir=store.tmp_dir,
        fsync=store.fsync,
        fast_store=listener.fast_store,
        chunked_receive=listener.chunked_receive,
        max_connections_per_peer=listener.max_connections_per_peer,
    )


def drain(server: ThreadedAssociationServer, grace_s: float) -> None:
    """Let the server's associations finish, for up to ``grace_s``; abort those still open."""
    deadline = time.monotonic() + grace_s
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    for assoc in server.active_associations:
        log.warning("aborting association at shutdown", extra={"assoc": assoc.native_id})
        assoc.abort()
