"""Engines: what turns the wire into :class:`~dicom_listener.received.Received` instances.

The listener's storage and checks (:mod:`dicom_listener.scp`), its study tracker
(:mod:`dicom_listener.assembly`) and its events do not depend on the engine; an engine only
runs the associations and hands each received data set to the storage SCP.

``stock``
    pynetdicom's public API alone: :meth:`~pynetdicom.ae.ApplicationEntity.start_server` with
    the listener's ``evt_handlers``; with ``chunked_receive``, pynetdicom writes each data set
    to a file as it arrives (``_config.STORE_RECV_CHUNKED_DATASET``) and the ``EVT_C_STORE``
    handler links it into the store's ``tmp/``. Works with any pynetdicom 3.x; the reference.
    Its guards against hostile peers are pynetdicom's own.
``fast``
    The accelerator (:mod:`dicom_listener.reactor`, :mod:`dicom_listener.fast_store`): the
    same handlers, on event-driven associations, with plain C-STOREs handled where their PDUs
    arrive, and the listener's guards against peers that claim, withhold or flood (issue #19).
    It mirrors private pynetdicom functions, so it runs only on the pynetdicom release whose
    sources it was copied from (:func:`dicom_listener.reactor.check_supported`;
    ``docs/listener-fast-engine.md``).
``auto``
    ``fast`` when its pins match the installed pynetdicom, otherwise one warning and ``stock``.

The fast engine's modules are imported only when it runs: a pynetdicom that lacks a private
name they use makes ``auto`` fall back, not the listener fail to import.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Literal

from pynetdicom import _config
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from dicom_listener.received import StoreFunction

log = logging.getLogger(__name__)

Engine = Literal["stock", "fast"]
EngineSetting = Literal["auto", "stock", "fast"]


class EngineUnavailable(RuntimeError):
    """``LISTENER__ENGINE=fast`` with a pynetdicom the fast engine was not derived from."""


def fast_unavailable() -> str | None:
    """Why the fast engine cannot run with the installed pynetdicom; ``None`` when it can."""
    try:
        from dicom_listener import reactor
    except (ImportError, AttributeError) as exc:  # a private name it uses has gone
        return f"the fast engine cannot be imported with this pynetdicom: {exc}"
    try:
        reactor.check_supported()
    except reactor.UnsupportedPynetdicom as exc:
        return str(exc)
    return None


def choose_engine(setting: EngineSetting) -> Engine:
    """The engine ``LISTENER__ENGINE`` asks for, on this installation.

    Raises
    ------
    EngineUnavailable
        ``fast`` asked for, and its pins do not match the installed pynetdicom.
    """
    if setting == "stock":
        return "stock"
    reason = fast_unavailable()
    if reason is None:
        return "fast"
    if setting == "fast":
        raise EngineUnavailable(f"LISTENER__ENGINE=fast: {reason}")
    log.warning(
        "fast listener engine unavailable, running the stock engine",
        extra={"setting": "LISTENER__ENGINE", "reason": reason},
    )
    return "stock"


def start_stock(
    ae: ApplicationEntity,
    address: tuple[str, int],
    *,
    evt_handlers: list[EventHandlerType],
    ssl_context: ssl.SSLContext | None,
    chunked_receive: bool,
) -> ThreadedAssociationServer:
    """The stock engine: ``ae.start_server(address, block=False, ...)``, the server accepting.

    ``chunked_receive``: data sets are written to files as they arrive (in the process's
    temporary directory, ``TMPDIR``: on the storage volume the handler links rather than
    copies them), not gathered in memory.
    """
    # Process-wide, as pynetdicom's configuration is (the fast engine has a receive directory
    # per association instead): a process runs one listener.
    _config.STORE_RECV_CHUNKED_DATASET = chunked_receive
    server = ae.start_server(
        address, block=False, evt_handlers=evt_handlers, ssl_context=ssl_context
    )
    assert server is not None  # block=False returns the server
    return server


def start_fast(
    ae: ApplicationEntity,
    address: tuple[str, int],
    *,
    evt_handlers: list[EventHandlerType],
    ssl_context: ssl.SSLContext | None,
    store: StoreFunction,
    tmp_dir: Path,
    fsync: bool,
    fast_store: bool,
    chunked_receive: bool,
    max_connections_per_peer: int,
) -> ThreadedAssociationServer:
    """The fast engine: the same handlers on event-driven associations.

    ``store`` decides on what the C-STORE fast path receives (``fast_store``; off: every
    C-STORE goes through pynetdicom's service class and the ``EVT_C_STORE`` handler);
    ``tmp_dir`` is where it and, with ``chunked_receive``, pynetdicom write data sets as they
    arrive, so that they are linked, not copied, into the store.
    """
    from dicom_listener.fast_store import FastStore
    from dicom_listener.reactor import start_server

    return start_server(
        ae,
        address,
        evt_handlers=evt_handlers,
        ssl_context=ssl_context,
        fast_store=FastStore(store, tmp_dir, fsync=fsync) if fast_store else None,
        receive_dir=tmp_dir if chunked_receive else None,
        max_connections_per_peer=max_connections_per_peer,
    )


__all__ = [
    "Engine",
    "EngineSetting",
    "EngineUnavailable",
    "choose_engine",
    "fast_unavailable",
    "start_fast",
    "start_stock",
]
