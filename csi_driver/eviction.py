"""Opt-in (``--evict-stale-pods``): evict the pods whose volume went stale.

A pod published before its backing mount was replaced keeps its containers' copy
of the dead bind (every access fails) until it restarts; its volume condition
says so (:func:`mount_core.consumer.stale_message`). With this on, the node
plugin also asks the API server to evict such pods: the Eviction API honours
PodDisruptionBudgets, and the pod's controller makes a new pod, which gets the
live mount. Only pods kubelet named (the CSIDriver's ``podInfoOnMount``, or
FlexVolume's options), always with their uid as a precondition, so a new pod of
the same name is never touched. The API is reached with the pod's service
account (in-cluster token and CA); the chart grants it ``create`` on
``pods/eviction`` and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mount_core.errors import ConfigError
from mount_core.logs import event
from mount_core.periodic import Periodic

if TYPE_CHECKING:
    from mount_core.manager import MountManager

log = logging.getLogger("hepvol.eviction")

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Pod namespaces and names (DNS subdomains) and uids: nothing else reaches a URL.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_UID = re.compile(r"^[0-9a-fA-F-]{1,64}$")
#: Seconds before a pod whose eviction was refused (a PodDisruptionBudget) or
#: accepted (it may take a while to go) is asked again.
RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class StalePod:
    namespace: str
    name: str
    uid: str
    consumer: str
    volume: str


@dataclass(frozen=True)
class ApiServer:
    """The Kubernetes API as a pod sees it (``KUBERNETES_SERVICE_HOST``, its token and CA)."""

    url: str
    token_path: str = f"{SERVICE_ACCOUNT}/token"
    ca_path: str = f"{SERVICE_ACCOUNT}/ca.crt"

    @classmethod
    def in_cluster(cls) -> ApiServer:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host or not os.path.exists(f"{SERVICE_ACCOUNT}/token"):
            raise ConfigError(
                "--evict-stale-pods needs the in-cluster API (KUBERNETES_SERVICE_HOST and a "
                f"service account token in {SERVICE_ACCOUNT}): run it in a pod whose service "
                "account token is mounted (the chart's node.evictStalePods does this)"
            )
        return cls(f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}")

    def evict(self, pod: StalePod, timeout: float = 10.0) -> int:
        """POST an Eviction for ``pod`` (uid precondition); the HTTP status."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "deleteOptions": {"preconditions": {"uid": pod.uid}},
        }
        with open(self.token_path) as token:  # re-read: projected tokens rotate
            bearer = token.read().strip()
        request = urllib.request.Request(  # noqa: S310 - https URL built from the environment
            f"{self.url}/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cafile=self.ca_path)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def stale_pods(manager: MountManager) -> list[StalePod]:
    """Pods (named by kubelet) that hold a volume since repaired under them."""
    found = []
    for backing in manager.status():
        for consumer in backing.consumers:
            if not consumer.stale or consumer.kind not in ("csi", "flex"):
                continue
            pod, uid = str(consumer.info.get("pod", "")), str(consumer.info.get("pod_uid", ""))
            namespace, _, name = pod.partition("/")
            if _NAME.match(namespace) and _NAME.match(name) and _UID.match(uid):
                found.append(StalePod(namespace, name, uid, consumer.id, backing.key))
    return found


class StalePodEvictor(Periodic):
    """A thread of the node daemon that evicts stale pods (a front's :class:`Server`)."""

    thread_name = "hepvol-evict"

    def __init__(self, manager: MountManager, api: ApiServer, interval: float) -> None:
        self.manager = manager
        self.api = api
        self._asked: dict[str, float] = {}
        super().__init__(interval, log)

    def run_once(self, now: float | None = None) -> dict[str, int]:
        """Ask once for every stale pod not asked for within :data:`RETRY_SECONDS`."""
        now = time.monotonic() if now is None else now
        answers = {}
        for pod in stale_pods(self.manager):
            if now - self._asked.get(pod.uid, -RETRY_SECONDS) < RETRY_SECONDS:
                continue
            self._asked[pod.uid] = now
            try:
                status = self.api.evict(pod)
            except (OSError, ssl.SSLError) as exc:
                event(log, f"cannot reach the API server to evict a stale pod: {exc}",
                      level=logging.WARNING, volume=pod.volume, consumer=pod.consumer)  # fmt: skip
                continue
            answers[f"{pod.namespace}/{pod.name}"] = status
            outcome = {201: "evicted", 200: "evicted", 404: "already gone", 409: "replaced",
                       429: "refused by a PodDisruptionBudget, asking again later"}  # fmt: skip
            event(log, f"stale pod {pod.namespace}/{pod.name}: "
                  f"{outcome.get(status, f'eviction failed (HTTP {status})')}",
                  level=logging.INFO if status in outcome else logging.WARNING,
                  volume=pod.volume, consumer=pod.consumer, status=status)  # fmt: skip
        return answers
