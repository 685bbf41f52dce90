"""The autofs program map for the CVMFS root, as hepvol ships it.

autofs runs it with the name looked up under the root as the only argument. A
fully qualified repository name (``atlas.cern.ch``) is answered with the map entry
that makes mount(8) run the CVMFS mount helper; anything else (``ls`` probing
``.hidden``, a short name, a typo) gets no answer, so it is simply not found and
never reaches the helper.
"""

from __future__ import annotations

import sys

from mount_core.errors import InvalidSpec
from mount_core.spec import check_repository


def entry(key: str) -> str | None:
    """The map entry for ``key``, or None when it is not a repository name."""
    try:
        check_repository(key)
    except InvalidSpec:
        return None
    return f"-fstype=cvmfs :{key}"


def main(argv: list[str]) -> int:
    answer = entry(argv[1]) if len(argv) == 2 else None
    if answer is None:
        return 1
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
