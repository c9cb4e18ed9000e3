"""``python -m dicom_listener``: run the listener alone (same as ``neurogate listener``);
arguments pass through (``python -m dicom_listener --help``)."""

import sys

from neurogate.cli import main

raise SystemExit(main(["listener", *sys.argv[1:]]))
