"""Print requirement lines from pyproject.toml, so the images pin exactly what the project pins.

``python deploy/requirements.py``                  the core dependencies
``python deploy/requirements.py ml --only torch``  the ``ml`` extra, only the named packages
``python deploy/requirements.py ml --skip torch``  the ``ml`` extra without them

The Dockerfile installs the dependencies from these lists before it copies the source, so a code
change does not reinstall PyTorch and TensorFlow; and torch comes from the CPU wheel index.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Collection
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(line: str) -> str:
    """The normalised project name of a requirement line (``torch==2.1`` -> ``torch``)."""
    match = _NAME.match(line)
    if match is None:
        raise ValueError(f"not a requirement: {line!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(
    pyproject: Path,
    extra: str | None = None,
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> list[str]:
    """The core dependencies, or one extra's, filtered by project name.

    Raises
    ------
    KeyError
        When ``extra`` is not an optional-dependencies group of ``pyproject``.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [
        line
        for line in lines
        if (only is None or requirement_name(line) in only) and requirement_name(line) not in skip
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="?", help="an optional-dependencies group; none: core")
    parser.add_argument("--only", action="append", help="keep only these projects")
    parser.add_argument("--skip", action="append", default=[], help="leave these projects out")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    only = None if args.only is None else {requirement_name(n) for n in args.only}
    skip = {requirement_name(n) for n in args.skip}
    print("\n".join(requirements(args.pyproject, args.extra, only, skip)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
