"""``python -m inference_worker``: run one inference worker and its exporter, the same as
``neurogate worker`` (start as many as you like: they form one consumer group); arguments
pass through (``python -m inference_worker --help``).
"""

import sys

from neurogate.cli import main

raise SystemExit(main(["worker", *sys.argv[1:]]))
