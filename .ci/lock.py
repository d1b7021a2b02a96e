"""Write constraints.txt: the exact versions of attrimp[dev]'s installed dependency closure.

pyproject.toml declares the ranges attrimp supports (torch>=2.11,<2.15, ...); constraints.txt
is the one tested set, which the README's two commands and .ci/run install with
``pip install -c constraints.txt``. Regenerate it from a venv that passed the tests:

    .venv/bin/python .ci/lock.py > constraints.txt
"""

from __future__ import annotations

import importlib.metadata as md
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# The tested set: exact versions of every package attrimp[dev] installs (its dependency closure),
# Python {python} on {platform}. pyproject.toml declares the supported ranges; this file pins one.
# Used by the README's two commands and .ci/run: pip install -c constraints.txt -e ".[dev]".
# Regenerate from a venv that passed the tests: .venv/bin/python .ci/lock.py > constraints.txt
"""


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """``{name: version}`` of ``root`` and everything it requires (markers evaluated here)."""
    env = default_environment()
    pins: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = md.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        pins[key] = dist.version
        for extra in ("", *wanted):
            if (key, extra) in done:
                continue
            done.add((key, extra))
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is None:
                    needed = extra == ""
                else:
                    needed = req.marker.evaluate({**env, "extra": extra})
                if needed:
                    todo.append((req.name, tuple(req.extras)))
    return pins


def main() -> None:
    pins = closure("attrimp", ("dev",))
    pins.pop("attrimp", None)
    python = ".".join(map(str, sys.version_info[:2]))
    print(HEADER.format(python=python, platform=sys.platform), end="")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
