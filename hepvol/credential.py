"""``hepvol credential``: register EOS credentials by name for Docker volumes.

Docker shows every ``docker volume create -o`` option in ``docker volume inspect``
and keeps it in its own metadata, so a Docker volume refers to a credential
(``-o credential-name=NAME``) instead of carrying it. The secret is read from a
file (never from the command line, which other users can see in ``ps``) and kept
in a 0600 file under the state dir.
"""

from __future__ import annotations

import argparse
import sys

from mount_core.config import Config
from mount_core.credentials import NamedCredentials, check_credential_name
from mount_core.errors import InvalidSpec
from mount_core.spec import Credential


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register (or replace) a credential read from a file")
    add.add_argument("name", help="what volumes give as -o credential-name=NAME")
    add.add_argument("--type", required=True, dest="kind", help="krb5, oauth2 or eostoken")
    add.add_argument("--file", required=True, help="file holding the secret ('-' = stdin)")
    remove = actions.add_parser("rm", help="forget a credential (volumes keep their own copy)")
    remove.add_argument("name")
    actions.add_parser("list", help="registered names, kinds and fingerprints (never values)")


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read(65537)
    try:
        with open(path, "rb") as handle:
            return handle.read(65537)
    except OSError as exc:
        raise InvalidSpec("--file", path, f"cannot read it: {exc.strerror}") from None


def run(args: argparse.Namespace, config: Config) -> int:
    from mount_core.statedir import StateDir

    StateDir(config.state_dir).ensure()
    store = NamedCredentials(config.state_dir)
    if args.action == "add":
        check_credential_name(args.name)
        Credential(args.kind, b"-")  # a bad kind is refused before the file is read
        credential = Credential(args.kind, _read(args.file))
        store.add(args.name, credential)
        print(f"credential {args.name} ({credential.kind}, {credential.fingerprint}) registered; "
              f"use: docker volume create -d eos -o credential-name={args.name} ...")  # fmt: skip
    elif args.action == "rm":
        if not store.remove(args.name):
            print(f"hepvol: no credential named {args.name!r}", file=sys.stderr)
            return 1
        print(f"credential {args.name} removed")
    else:
        for name, credential in store.names():
            print(f"{name}\t{credential.kind}\t{credential.fingerprint}")
    return 0
