"""NeuroGate shared runtime: settings, event bus, storage and database.

Every service (``dicom_listener``, ``inference_worker``, ``api``) imports from here; nothing here
imports a service. ``neurogate.cli`` is the composition root that starts services by name.
"""

__version__ = "0.1.0"
