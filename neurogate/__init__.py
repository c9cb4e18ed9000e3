"""NeuroGate shared runtime: settings, event bus, storage and database.

Every service (``dicom_listener``, ``inference_worker``, ``api``) imports from here, and the
runtime imports no service. The one exception is the command line, :mod:`neurogate.cli`: the
composition root, above the services, that imports each one inside the subcommand that starts
it (``python -m dicom_listener``, ``python -m inference_worker`` and ``python -m api`` run it).
"""

__version__ = "0.1.0"
