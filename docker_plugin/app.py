"""The Docker volume plugin protocol as a Flask app.

Every call is ``POST /<Method>`` with a JSON body. Answers use the protocol's
exact field names and the content type ``application/vnd.docker.plugins.v1+json``.
A failure is a non-empty ``Err`` with HTTP 500 (as docker/go-plugins-helpers
answers); dockerd shows the ``Err`` text to the user. Core errors are turned into
``Err`` in exactly one place, :func:`_failure`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from docker_plugin.volumes import DockerVolumes
from mount_core.errors import HepvolError, NotFound
from mount_core.logs import event

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"

log = logging.getLogger("hepvol.docker")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class BadRequest(HepvolError):
    """The request body is not what the protocol says."""


def _reply(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)


def _failure(exc: Exception, method: str, name: object) -> Response:
    """The one place where errors become protocol errors."""
    if isinstance(exc, HepvolError):
        message = str(exc)
        # dockerd asks Get before every implicit create: not finding is routine.
        level = logging.INFO if isinstance(exc, NotFound) else logging.WARNING
        event(log, f"{method} refused: {message}", volume=str(name), level=level)
    else:
        log.exception(f"{method} crashed", extra={"volume": str(name), "consumer": None})
        message = (
            f"internal error in the hepvol Docker plugin ({type(exc).__name__}); "
            "see the plugin's log"
        )
    return _reply({"Err": message}, 500)


def _body() -> dict[str, Any]:
    # The WSGI input directly: werkzeug's get_data() layers cost more than the call.
    try:
        raw = request.environ["wsgi.input"].read()
    except OSError:  # the client stopped sending (the connection's read timeout)
        raise BadRequest("the request body did not arrive in time; connection dropped") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not JSON") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to be a plugin call") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"the request needs a non-empty string field {name!r}")
    return value


def create_app(volumes: DockerVolumes) -> Flask:
    """The plugin app serving ``volumes`` (one driver)."""
    app = Flask("hepvol.docker_plugin")

    def create(body: dict[str, Any]) -> dict[str, Any]:
        volumes.create(_field(body, "Name"), body.get("Opts"))
        return {"Err": ""}

    def remove(body: dict[str, Any]) -> dict[str, Any]:
        volumes.remove(_field(body, "Name"))
        return {"Err": ""}

    def mount(body: dict[str, Any]) -> dict[str, Any]:
        path = volumes.mount(_field(body, "Name"), _field(body, "ID"))
        return {"Mountpoint": path, "Err": ""}

    def unmount(body: dict[str, Any]) -> dict[str, Any]:
        volumes.unmount(_field(body, "Name"), _field(body, "ID"))
        return {"Err": ""}

    def path(body: dict[str, Any]) -> dict[str, Any]:
        return {"Mountpoint": volumes.describe(_field(body, "Name")).mountpoint, "Err": ""}

    def get(body: dict[str, Any]) -> dict[str, Any]:
        found = volumes.describe(_field(body, "Name"))
        volume = {
            "Name": found.name,
            "Mountpoint": found.mountpoint,
            "CreatedAt": found.created_at,
            "Status": found.status,
        }
        return {"Volume": volume, "Err": ""}

    def list_(body: dict[str, Any]) -> dict[str, Any]:
        listed = [{"Name": v.name, "Mountpoint": v.mountpoint} for v in volumes.list()]
        return {"Volumes": listed, "Err": ""}

    def activate(body: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["VolumeDriver"]}

    def capabilities(body: dict[str, Any]) -> dict[str, Any]:
        return {"Capabilities": {"Scope": "local"}}

    routes: dict[str, Handler] = {
        "Plugin.Activate": activate,
        "VolumeDriver.Create": create,
        "VolumeDriver.Remove": remove,
        "VolumeDriver.Mount": mount,
        "VolumeDriver.Unmount": unmount,
        "VolumeDriver.Path": path,
        "VolumeDriver.Get": get,
        "VolumeDriver.List": list_,
        "VolumeDriver.Capabilities": capabilities,
    }

    def view(method: str, handler: Handler) -> Callable[[], Response]:
        def answer() -> Response:
            body: dict[str, Any] = {}
            try:
                body = _body()
                return _reply(handler(body))
            except Exception as exc:
                return _failure(exc, method, body.get("Name"))

        return answer

    for method, handler in routes.items():
        app.add_url_rule(
            f"/{method}", endpoint=method, view_func=view(method, handler), methods=["POST"]
        )
    return app
