"""Consumers: the holders of a backing mount."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mount_core.errors import InvalidSpec

KINDS = ("docker", "csi", "flex", "cli")
#: Consumers whose container runtime gives each container its own copy of the bind
#: (of the target, or of the backing path for Docker): a repair never reaches it.
CONTAINER_KINDS = ("docker", "csi", "flex")


def stale(kind: str, generation: int, backing_generation: int) -> bool:
    """True when a consumer's container still holds a backing mount since replaced."""
    return kind in CONTAINER_KINDS and generation < backing_generation


def stale_message(kind: str) -> str:
    """What a stale consumer's volume condition says: what happened and what to do."""
    restart = "restart the container" if kind == "docker" else "restart the pod"
    return (
        "the volume's FUSE server died and was replaced after this consumer started; "
        f"its container still holds the dead mount (I/O errors): {restart}"
    )


@dataclass(frozen=True)
class Consumer:
    """One holder of a backing mount, named ``<kind>:<ident>``.

    Docker consumers (``docker:<mount ID>``) form a multiset: dockerd may mount the
    same ID twice and unmount it once per mount. The others are idempotent.
    ``info`` is free-form context shown by ``hepvol status`` (pod name, …).
    """

    kind: str
    ident: str
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidSpec("consumer kind", self.kind, f"use one of {', '.join(KINDS)}")
        if (
            not self.ident
            or len(self.ident) > 4096
            or any(ord(c) < 32 and c != "\t" for c in self.ident)
        ):
            raise InvalidSpec(
                "consumer id", self.ident, "must be 1-4096 characters without control characters"
            )

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.ident}"

    @property
    def multiset(self) -> bool:
        return self.kind == "docker"
