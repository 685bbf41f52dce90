"""Shared pieces of the fuzz suite: case budgets, hostile inputs, and the "nothing escaped" check.

Each front is fuzzed at its real boundary (the Docker plugin's socket, the
installed FlexVolume launcher, the CSI server's gRPC socket) with hypothesis. The
number of cases is CI-sized by default; ``HEPVOL_FUZZ_EXAMPLES=N`` runs N cases
per front instead (the documented run uses 10000, see docs/security.md).

:class:`WorldSnapshot` records everything a front could wrongly touch: every
file and directory of the test's world outside the configured roots (the local
repositories included), a few canary paths outside the world, and every mount
that is not below the mount root or a target root. :meth:`WorldSnapshot.check`
compares the present with that record after each case.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv

FUZZ_EXAMPLES = "HEPVOL_FUZZ_EXAMPLES"
#: A value planted in credential fields: no reply may ever echo it.
PLANTED_SECRET = "planted-EOS-token-7f3a9c"
#: Paths outside every test world that no case may create.
CANARIES = ("/etc/hepvol-fuzz-canary", "/tmp/hepvol-fuzz-canary", "/hepvol-fuzz-canary")


def examples(ci: int) -> int:
    """Cases per test: ``ci`` unless ``$HEPVOL_FUZZ_EXAMPLES`` asks for more (or fewer)."""
    return int(os.environ.get(FUZZ_EXAMPLES, ci))


def fuzz_settings(ci: int) -> settings:
    """Hypothesis settings for a test driving a live daemon with ``ci`` cases in CI."""
    return settings(
        max_examples=examples(ci),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class Budget:
    """The cases of one fuzz test: its settings, and a check that they all ran."""

    def __init__(self, ci: int) -> None:
        self.ci = ci
        self.ran = 0

    @property
    def settings(self) -> settings:
        return fuzz_settings(self.ci)

    def ran_one(self) -> None:
        self.ran += 1

    def check(self) -> None:
        wanted = examples(self.ci)
        assert self.ran >= wanted, f"only {self.ran} of {wanted} cases ran"


# Hostile values ---------------------------------------------------------------

HOSTILE = (
    "",
    ".",
    "..",
    "../../etc",
    "../../../../../../etc/passwd",
    "a/b",
    "/etc/passwd",
    f"{SAMPLE}/../x",
    f"{SAMPLE}\x00.evil",
    "x\ny",
    "x\r\ny",
    "tab\there",
    "\x1b[31mred",
    "\u2028line-separator",
    "\x85nel",
    "ünïcödé.hepvol.org",
    "日本語.hepvol.org",
    "emoji-🚀",
    "a" * 256,
    "a" * 5000,
    f"{SAMPLE}@../../x",
    f"{SAMPLE}#" + "f" * 41,
    "$(touch /tmp/hepvol-fuzz-canary)",
    "`touch /tmp/hepvol-fuzz-canary`",
    "; touch /tmp/hepvol-fuzz-canary",
    "-o allow_other",
    "--help",
)
#: Valid names of the sample world, so that some cases reach real mounts.
VALID_REPOSITORIES = (SAMPLE, f"{SAMPLE}@v1", "missing.hepvol.org")


def hostile_text() -> st.SearchStrategy[str]:
    """Strings an attacker or a broken client might send."""
    return st.one_of(
        st.sampled_from(HOSTILE),
        st.text(max_size=40),
        st.text(alphabet=string.printable, max_size=80),
        st.builds(lambda a, b: f"{a}/../{b}", st.text(max_size=10), st.text(max_size=10)),
        st.builds(lambda n: "é" * n, st.integers(200, 3000)),
        st.builds(lambda s: s + "\x00" + s, st.text(max_size=10)),
    )


def names() -> st.SearchStrategy[str]:
    """Volume and repository names: hostile ones mixed with valid ones."""
    return st.one_of(st.sampled_from(VALID_REPOSITORIES), hostile_text())


def json_values() -> st.SearchStrategy[object]:
    """Any JSON value, nested a little."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text()
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(hostile_text(), inner, max_size=4)
        ),
        max_leaves=8,
    )


def is_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def assert_readable(message: str, limit: int = 2000) -> None:
    """A message fit for a person: non-empty, one printable line, bounded, no planted secret."""
    assert message, "an error needs a message"
    assert message.isprintable(), f"non-printable characters in {message[:200]!r}"
    assert len(message) <= limit, f"{len(message)} characters: {message[:200]!r}…"
    assert PLANTED_SECRET not in message, "a secret was echoed back"


# What no case may touch ---------------------------------------------------------


def _tree(root: Path, skip: Iterable[Path]) -> dict[str, tuple[int, int, int]]:
    skipped = {str(p) for p in skip}
    found: dict[str, tuple[int, int, int]] = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in skipped]
        for name in dirs + files:
            path = os.path.join(directory, name)
            if name.endswith(".log") or path in skipped:
                continue  # logs grow with every case; that is their job
            info = os.lstat(path)
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            found[path] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), size)
    return found


@dataclass
class WorldSnapshot:
    """Files outside the configured roots and mounts outside the mount/target roots."""

    env: HepvolEnv
    files: dict[str, tuple[int, int, int]]
    mounts: set[str]

    @classmethod
    def take(cls, env: HepvolEnv) -> WorldSnapshot:
        return cls(env, cls._files(env), cls._mounts(env))

    @staticmethod
    def _roots(env: HepvolEnv) -> list[Path]:
        config = env.config
        return [Path(config.state_dir), Path(config.mount_root), *map(Path, config.target_roots)]

    @classmethod
    def _files(cls, env: HepvolEnv) -> dict[str, tuple[int, int, int]]:
        return _tree(env.workdir.parent, cls._roots(env))

    @classmethod
    def _mounts(cls, env: HepvolEnv) -> set[str]:
        allowed = tuple(str(root) + "/" for root in cls._roots(env)[1:])
        return {
            e.mount_point for e in MountTable().entries if not e.mount_point.startswith(allowed)
        }

    def check(self) -> None:
        """Fail if anything outside the configured roots was created, changed or removed."""
        files = self._files(self.env)
        added = sorted(set(files) - set(self.files))
        removed = sorted(set(self.files) - set(files))
        changed = sorted(p for p in set(files) & set(self.files) if files[p] != self.files[p])
        assert not (added or removed or changed), (
            f"outside the roots: added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
        )
        mounts = self._mounts(self.env)
        assert mounts == self.mounts, f"mounts outside the roots changed: {mounts ^ self.mounts}"
        for canary in CANARIES:
            assert not os.path.lexists(canary), f"{canary} was created"

    def check_ledger_matches_targets(self) -> None:
        """Every mount below a target root is a consumer the ledger knows (nothing leaked)."""
        ledger = self.env.manager().ledger
        known = {row.target for row in ledger.consumers() if row.target}
        roots = tuple(root + "/" for root in self.env.config.target_roots)
        mounted = {e.mount_point for e in MountTable().entries if e.mount_point.startswith(roots)}
        assert mounted <= known, f"mounts no consumer holds: {sorted(mounted - known)[:5]}"
