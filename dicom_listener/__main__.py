"""``python -m dicom_listener``: run the listener alone (same as ``neurogate listener``)."""

from neurogate.cli import main

raise SystemExit(main(["listener"]))
