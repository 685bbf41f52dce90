"""The FlexVolume call protocol: ``init``, ``mount``, ``unmount``; the rest is ``Not supported``.

kubelet execs ``DRIVER <call> <args...>`` and parses stdout and stderr together as
one JSON object, so a call prints exactly one object and nothing else, whatever
happens: the reply goes to a private copy of the original stdout, while fds 1
and 2 point at ``/dev/null`` for the whole call (a stray print, a warning or a
client started by a backend can neither corrupt the reply nor hold kubelet's
pipe open). Logs are JSON lines in ``<state dir>/logs/flexvolume.log``.

Each call is a fresh process, so modules are imported only by the calls that
need them: ``init`` imports nothing, ``mount`` and ``unmount`` the core, and no
call imports gRPC, Flask, prometheus, psutil or pyfuse3.
"""

from __future__ import annotations

import os
import sys
import time

# typing costs milliseconds per call; mypy honours a module-level TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

    from mount_core.manager import MountManager

SUCCESS, FAILURE, NOT_SUPPORTED = "Success", "Failure", "Not supported"
#: Explicitly false: kubelet defaults missing capabilities to true, which would
#: make it wait for an attach that never comes or chown a read-only tree.
CAPABILITIES = {
    "attach": False,
    "selinuxRelabel": False,
    "fsGroup": False,
    "supportsMetrics": False,
    "requiresFSResize": False,
}
_MAX_MESSAGE = 1000
#: Printed when the call itself could not produce its reply.
_UNANSWERED = b'{"status": "Failure", "message": "internal error: the call gave no reply"}\n'

Reply = dict[str, object]


def reply(status: str, message: str = "", **extra: object) -> Reply:
    """A protocol reply; the message is made one printable line and bounded."""
    text = " ".join(message.split())
    # Option keys and paths come from the request: escape what a terminal would act on.
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    found: Reply = {"status": status}
    if text:
        found["message"] = text
    found.update(extra)
    return found


class Call:
    """One driver invocation: the backend it serves and where its config lives."""

    def __init__(
        self,
        backend: str,
        config_path: str | None,
        opened: tuple[MountManager, logging.Logger] | None = None,
    ) -> None:
        self.backend = backend
        self.config_path = config_path
        #: A node daemon serving the call (:mod:`flexvolume.relay`) passes its own core.
        self.opened = opened
        self.log: logging.Logger | None = opened[1] if opened else None

    def _open(self) -> tuple[MountManager, logging.Logger]:
        """Load the config, send logs to the state dir, and build the core."""
        if self.opened is not None:
            return self.opened
        import logging

        from mount_core import config, logs
        from mount_core.manager import MountManager
        from mount_core.statedir import StateDir

        settings = config.load(self.config_path)
        logs.to_state_dir(StateDir(settings.state_dir), "flexvolume", settings.log_level)
        self.log = logging.getLogger("hepvol.flexvolume")
        return MountManager(settings), self.log

    def init(self, args: list[str]) -> Reply:
        return reply(SUCCESS, capabilities=CAPABILITIES)

    def mount(self, args: list[str]) -> Reply:
        if len(args) not in (2, 3):
            return reply(FAILURE, "usage: mount <pod volume dir> [<device>] <json options>")
        target, raw = args[0], args[-1]
        manager, log = self._open()
        import json

        from flexvolume.options import parse
        from mount_core import targets
        from mount_core.consumer import Consumer
        from mount_core.errors import InvalidSpec
        from mount_core.logs import event

        try:
            options = json.loads(raw)
        except ValueError as exc:
            # Not the text itself: it may hold the base64 of a kubernetes.io/secret/*.
            raise InvalidSpec(
                "mount options", f"<{len(raw)} bytes>", f"are not valid JSON ({exc})"
            ) from None
        except RecursionError:
            raise InvalidSpec(
                "mount options",
                f"<{len(raw)} bytes>",
                "are nested too deeply (kubelet sends one flat JSON object of strings)",
            ) from None
        request = parse(self.backend, options)
        target = targets.normalize(target)  # a clear message before anything else sees it
        start = time.perf_counter()
        published = manager.publish(request.spec, Consumer("flex", target, info=request.info),
                                    target, readonly=request.readonly)  # fmt: skip
        mode = published.mode
        event(log, "mount", volume=request.spec.key, consumer=f"flex:{target}",
              pod=request.info.get("pod"), mode=mode,
              ms=round((time.perf_counter() - start) * 1000, 2))  # fmt: skip
        return reply(SUCCESS, f"{request.spec.source} mounted {mode} at {target}")

    def unmount(self, args: list[str]) -> Reply:
        if len(args) != 1:
            return reply(FAILURE, "usage: unmount <pod volume dir>")
        manager, log = self._open()
        from mount_core.logs import event

        found = manager.unpublish(args[0])
        event(log, "unmount" if found else "unmount: nothing of ours was mounted",
              consumer=f"flex:{args[0]}")  # fmt: skip
        return reply(SUCCESS, "unmounted" if found else "nothing was mounted")

    def run(self, argv: list[str]) -> Reply:
        if not argv:
            return reply(FAILURE, "usage: DRIVER init | mount <dir> <json> | unmount <dir>")
        handler = {"init": self.init, "mount": self.mount, "unmount": self.unmount}.get(argv[0])
        if handler is None:
            return reply(NOT_SUPPORTED)
        return handler(argv[1:])


def _is_core_error(exc: BaseException) -> bool:
    try:
        from mount_core.errors import HepvolError
    except BaseException:
        return False
    return isinstance(exc, HepvolError)


def answer(call: Call, argv: list[str]) -> Reply:
    """Run the call; turn every error into a Failure reply (the top-level guard)."""
    try:
        return call.run(argv)
    except BaseException as exc:
        from_core = _is_core_error(exc)
        if from_core:
            failure = reply(FAILURE, str(exc))
        else:
            failure = reply(FAILURE, f"internal error: {type(exc).__name__}: {exc}")
        if call.log is not None:
            call.log.error(
                f"{argv[0] if argv else 'call'} failed: {failure['message']}",
                exc_info=not from_core,
                extra={"volume": None, "consumer": None, "argv": argv[:2]},
            )
        return failure


def encode(result: Reply) -> bytes:
    """The reply as the driver prints it: one JSON line."""
    if result.keys() == {"status"} and result["status"] == NOT_SUPPORTED:
        return b'{"status": "Not supported"}\n'  # the common case, without importing json
    if result.get("capabilities") is CAPABILITIES and len(result) == 2:
        flags = ", ".join(f'"{k}": {"true" if v else "false"}' for k, v in CAPABILITIES.items())
        return f'{{"status": "{result["status"]}", "capabilities": {{{flags}}}}}\n'.encode()
    import json

    return (json.dumps(result) + "\n").encode()


def main(argv: list[str], backend: str, config_path: str | None = None) -> int:
    """Serve one kubelet call for ``backend``; print the reply; return the exit status.

    Whatever escapes the call (an error while reporting an error, a signal turned
    into an exception) still prints one Failure line: with fds 1 and 2 on
    /dev/null, an exception leaving here would end the process with no output.
    """
    out = os.dup(1)  # not inherited by children (PEP 446)
    status, data = 1, _UNANSWERED
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives for the process
        result = answer(Call(backend, config_path), argv)
        data = encode(result)
        status = 1 if result["status"] == FAILURE else 0
    except BaseException:
        status, data = 1, _UNANSWERED
    view = memoryview(data)
    while view:  # a pipe may take a write in parts
        view = view[os.write(out, view) :]
    os.close(out)
    return status
