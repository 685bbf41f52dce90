"""The launcher's side of the hand-over: give a kubelet call to the node daemon.

kubelet runs the driver as a fresh process for every call, and a Python process
that imports the core spends far longer importing than working. When a node
daemon (``hepvol watch`` or ``hepvol csi``) runs, it serves FlexVolume calls on a
Unix socket in the state dir (:mod:`flexvolume.relay`); the launcher sends it the
call and prints its reply, so a call costs an interpreter start and one round
trip. This module imports only builtin modules (``_socket``, ``posix``): it runs
before anything else in every call.

Whenever the daemon cannot answer — no socket, a socket file nobody listens on,
a daemon that does not reply within the bound, or a daemon that declines (another
mount namespace) — :func:`hand_over` returns and the launcher runs the call
in-process, which is always correct: both paths go through the same core, its
locks and its ledger, and mount and unmount are idempotent.

Wire format: the request is ``backend\\0call\\0arg...`` (arguments never hold NUL),
the reply one status byte (``0``, ``1``, or ``-`` for "run it yourself") followed
by exactly what the driver prints.
"""

import _socket
import posix

#: The calls worth handing over (``init`` and the rest cost nothing in-process).
RELAYED = ("mount", "unmount")
DECLINED = b"-"
CONNECT_TIMEOUT = 1.0


def hand_over(argv: list[str], backend: str, path: str | None, timeout: float) -> None:
    """Let the daemon at ``path`` serve the call: print its reply and exit, or return."""
    if not path or not argv or argv[0] not in RELAYED:
        return
    reply = _ask(path, "\0".join([backend, *argv]).encode("utf-8", "surrogateescape"), timeout)
    # A reply cut short (the daemon died while sending) or without its JSON object
    # (an empty body) is not a reply: printing it would leave kubelet nothing to parse.
    if not reply or reply[:1] not in (b"0", b"1") or reply[1:2] != b"{" or reply[-1:] != b"\n":
        return
    view = memoryview(reply)[1:]
    while view:
        view = view[posix.write(1, view) :]
    posix._exit(reply[0] - 48)


def _ask(path: str, request: bytes, timeout: float) -> bytes | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.settimeout(timeout)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:  # absent, refused, timed out, reset: run the call in-process
        return None
    finally:
        sock.close()
