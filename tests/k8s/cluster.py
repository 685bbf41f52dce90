"""A real one-node Kubernetes cluster for the suite, in a private mount namespace.

``Cluster.up()`` starts, in a mount namespace of its own (a holder process with
``/`` made rshared inside it, private towards the machine, the way a systemd host
shares its mounts): containerd (own root, state and socket), etcd,
kube-apiserver, kubelet, kube-controller-manager and kube-scheduler from the
build cache (``make k8s-binaries``), on free loopback ports. ``down()`` ends
every process it started by PID (and every process left in the node's cgroups:
containers, shims, FUSE servers), ends the namespace (its mounts go with it),
removes the cgroups and the work directory. Everything is named after one
token, so parallel runs never share a port, a cgroup or a path.

Facts of this machine kind behind the settings (../shared/tools/k8s/RECIPE.md):
cgroup v1 (kubelet needs failCgroupV1: false), root without CAP_SYS_RESOURCE
(containerd's restrict_oom_score_adj), no pod network (a CNI stand-in gives pods
a 127.0.0.N address; pods reach nothing, so the CSI controller runs on the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mount_core import cgroups, mountinfo

HERE = Path(__file__).resolve().parent
NODE = "test-node"
#: Host paths kubelet, containerd and CNI hard-code: bound from the work dir inside
#: the namespace (the FlexVolume init container copies hepvol to the host's /opt).
BOUND = ("/run/containerd", "/var/log", "/opt", "/var/lib/kubelet", "/var/lib/cni")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5
) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _pids_in(group: Path) -> list[int]:
    pids: list[int] = []
    for procs in group.rglob("cgroup.procs") if group.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup(group: Path) -> None:
    for directory in sorted(
        (p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        group.rmdir()


@dataclass
class Cluster:
    """One node: its work dir, ports, daemons and helpers to drive it."""

    bin: Path
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hvk-", dir="/tmp")))
    token: str = field(default_factory=lambda: f"{os.getpid()}")
    holder: subprocess.Popen[bytes] | None = None
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    # --- names -------------------------------------------------------------------
    @property
    def cgroup_root(self) -> str:
        """kubelet's cgroupRoot: every pod's cgroup is below it."""
        return f"hepvol-k8s-{self.token}"

    @property
    def server_cgroup(self) -> str:
        """The chart's hepvol.serverCgroup for this run."""
        return f"hepvol-servers-k8s-{self.token}"

    @property
    def kubelet_dir(self) -> Path:
        return self.work / "kubelet"

    @property
    def containerd_socket(self) -> Path:
        return self.work / "containerd" / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        return self.work / "etc" / "admin.kubeconfig"

    def log(self, name: str) -> Path:
        return self.work / "run" / f"{name}.log"

    # --- running things in the namespace ------------------------------------------
    def ns(self, argv: Sequence[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", f"--wd={self.work}", "--", *argv]

    def run(self, *argv: str, timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a command inside the node's mount namespace; ``check`` fails with its output."""
        result = subprocess.run(self.ns(argv), capture_output=True, text=True, timeout=timeout,
                                check=False, input=input)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()[-2000:]}")  # fmt: skip
        return result

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> None:
        """A daemon in the namespace, its output in run/NAME.log; ended by PID in down()."""
        with open(self.log(name), "ab") as log:
            self.daemons[name] = subprocess.Popen(
                self.ns(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )  # fmt: skip

    def stop(self, name: str, grace: float = 15) -> None:
        process = self.daemons.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}",
                "--request-timeout=30s", *args]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                check=False, input=input)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def apply(self, manifest: str | dict[str, Any]) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", input=text)

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run("ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args,
                        timeout=timeout)  # fmt: skip

    # --- bring-up ---------------------------------------------------------------
    def up(self) -> None:
        # Others may traverse it: cvmfs2 runs as its own user, pods as non-root users.
        self.work.chmod(0o755)
        for sub in ("run", "etc", "logs/pods", "cni/bin", "cni/net.d", "containerd", "flexvolume",
                    "manifests", *(f"nsroot{p}" for p in BOUND)):  # fmt: skip
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.ports = {n: free_port() for n in ("etcd", "peer", "apiserver", "kubelet", "healthz",
                                               "cm", "scheduler")}  # fmt: skip
        self._namespace()
        self._cgroups()
        self._files()
        self.start(
            "containerd", "containerd", "--config", str(self.work / "containerd/config.toml")
        )
        wait_until("containerd", lambda: self.run("ctr", "-a", str(self.containerd_socket),
                                                   "version", check=False).returncode == 0, 30)  # fmt: skip
        self._control_plane()
        self.start("kubelet", str(self.bin / "kubelet"), *self.kubelet_args())
        wait_until("the node to be Ready", self.node_ready, 90)
        self.start("kube-controller-manager", str(self.bin / "kube-controller-manager"),
                   f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1",
                   f"--secure-port={self.ports['cm']}", "--leader-elect=false",
                   f"--service-account-private-key-file={self.work}/etc/sa.key",
                   f"--root-ca-file={self.work}/apiserver/certs/apiserver.crt",
                   "--controllers=*,-cloud-node-lifecycle",
                   f"--flex-volume-plugin-dir={self.work}/flexvolume", "--v=1")  # fmt: skip
        self.start("kube-scheduler", str(self.bin / "kube-scheduler"),
                   f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1",
                   f"--secure-port={self.ports['scheduler']}", "--leader-elect=false", "--v=1")  # fmt: skip
        wait_until("the default service account",
                   lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                   60)  # fmt: skip

    def _namespace(self) -> None:
        pidfile = self.work / "run" / "ns.pid"
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
             f'mount --make-rshared / && echo $$ > {pidfile} && exec sleep infinity'],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_until(
            "the namespace holder", lambda: pidfile.exists() and pidfile.read_text(), 10, 0.05
        )
        for path in BOUND:
            if not os.path.exists(path):
                os.makedirs(path)
                self.created.append(path)
            self.run("mount", "--bind", str(self.work / f"nsroot{path}"), path)

    def _cgroups(self) -> None:
        for root in cgroups.hierarchy_roots(mountinfo.read()):
            group = Path(root, self.cgroup_root)
            group.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (group / name).exists():
                    (group / name).write_text((Path(root) / name).read_text())

    def _files(self) -> None:
        w, etc = self.work, self.work / "etc"
        for name in ("loopnet", "loopback"):
            shutil.copy(HERE / "cni" / name, w / "cni" / "bin" / name)
        (w / "cni/net.d/10-loopnet.conflist").write_text(json.dumps(
            {"cniVersion": "0.4.0", "name": "loopback-only", "plugins": [{"type": "loopnet"}]}))  # fmt: skip
        (w / "containerd/config.toml").write_text(f"""version = 2
root = "{w}/containerd/root"
state = "{w}/containerd/state"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = "{w}/containerd/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # root here lacks CAP_SYS_RESOURCE: runc cannot write kubelet's negative oom_score_adj
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{w}/cni/bin"
    conf_dir = "{w}/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "{w}/containerd/opt"
""")
        (etc / "tokens.csv").write_text(
            "admin-token,admin,admin,system:masters\n"
            f"kubelet-token,system:node:{NODE},kubelet-{NODE},system:nodes\n"
        )
        subprocess.run(["openssl", "genrsa", "-out", str(etc / "sa.key"), "2048"], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(["openssl", "rsa", "-in", str(etc / "sa.key"), "-pubout", "-out",
                        str(etc / "sa.pub")], check=True, capture_output=True)  # fmt: skip
        for user, token in (("admin", "admin-token"), ("kubelet", "kubelet-token")):
            (etc / f"{user}.kubeconfig").write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "test",
                "clusters": [{"name": "test", "cluster": {
                    "server": f"https://127.0.0.1:{self.ports['apiserver']}",
                    "certificate-authority": f"{w}/apiserver/certs/apiserver.crt"}}],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            }))  # fmt: skip
        (etc / "kubelet-config.json").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            "staticPodPath": f"{w}/manifests", "volumePluginDir": f"{w}/flexvolume",
            "address": "127.0.0.1", "port": self.ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["healthz"],
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {}},
            "authorization": {"mode": "AlwaysAllow"}, "resolvConf": "/etc/resolv.conf",
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98,
            "failSwapOn": False, "serializeImagePulls": False, "podLogsDir": f"{w}/logs/pods",
        }))  # fmt: skip

    def kubelet_args(self) -> list[str]:
        return [f"--config={self.work}/etc/kubelet-config.json", f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.kubelet_dir}/pki", f"--hostname-override={NODE}",
                f"--kubeconfig={self.work}/etc/kubelet.kubeconfig", "--v=2"]  # fmt: skip

    def _control_plane(self) -> None:
        w, p = self.work, self.ports
        self.start("etcd", str(self.bin / "etcd"), "--name", "test", "--data-dir", f"{w}/etcd",
                   "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}",
                   "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
                   "--listen-peer-urls", f"http://127.0.0.1:{p['peer']}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['peer']}",
                   "--initial-cluster", f"test=http://127.0.0.1:{p['peer']}", "--log-level", "warn")  # fmt: skip
        self.start("kube-apiserver", str(self.bin / "kube-apiserver"),
                   f"--etcd-servers=http://127.0.0.1:{p['etcd']}", "--bind-address=127.0.0.1",
                   "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
                   "--endpoint-reconciler-type=none", f"--cert-dir={w}/apiserver/certs",
                   f"--token-auth-file={w}/etc/tokens.csv", "--authorization-mode=Node,RBAC",
                   "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
                   "--service-account-issuer=https://kubernetes.default.svc",
                   f"--service-account-key-file={w}/etc/sa.pub",
                   f"--service-account-signing-key-file={w}/etc/sa.key",
                   "--service-cluster-ip-range=10.96.0.0/24", "--v=1")  # fmt: skip
        wait_until("the API server", lambda: (w / "apiserver/certs/apiserver.crt").exists()
                   and self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 90)  # fmt: skip

    def node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def import_images(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", str(archive))

    def restart_kubelet(self) -> None:
        self.stop("kubelet")
        self.start("kubelet", str(self.bin / "kubelet"), *self.kubelet_args())
        wait_until("kubelet's healthz after its restart", self._kubelet_healthy, 60)

    def _kubelet_healthy(self) -> bool:
        address = ("127.0.0.1", self.ports["healthz"])
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=2) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return b"200 OK" in s.recv(200)
        return False

    # --- what runs on the node -----------------------------------------------------
    def node_pids(self) -> list[int]:
        """Every process in the pods' cgroups (containers) and in the servers' cgroup."""
        found: set[int] = set()
        for root in cgroups.hierarchy_roots(mountinfo.read()):
            for name in (self.cgroup_root, self.server_cgroup):
                found.update(_pids_in(Path(root, name)))
        return sorted(found)

    def mounts_under(self, path: Path) -> list[str]:
        """Mount points below ``path`` in the node's mount namespace (the host's view)."""
        assert self.holder is not None
        entries = mountinfo.read(f"/proc/{self.holder.pid}/mountinfo")
        return [e.mount_point for e in entries if e.mount_point.startswith(f"{path}/")]

    def processes_in_namespace(self) -> list[int]:
        """Processes whose mount namespace is the node's (daemons, shims, FlexVolume calls)."""
        if self.holder is None:
            return []
        try:
            ours = os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/mnt").st_ino == ours:
                        found.append(int(entry))
        return found

    # --- teardown ------------------------------------------------------------------
    def save_logs(self, to: Path) -> None:
        """Daemon, container and hepvol logs (the work dir is removed)."""
        for part in ("run", "logs", "chart-state/logs", "ctrl-state/logs"):
            source = self.work / part
            if source.is_dir():
                shutil.copytree(source, to / part.replace("/", "-"), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.tar", "pause", "*.sock"))  # fmt: skip

    def down(self) -> list[str]:
        """End everything; returns what could not be cleaned (the caller asserts it is empty)."""
        problems: list[str] = []
        for name in ("csi-provisioner", "hepvol-controller", "kubelet", "kube-scheduler",
                     "kube-controller-manager", "kube-apiserver", "etcd"):  # fmt: skip
            self.stop(name)
        if self.holder is not None and "containerd" in self.daemons:
            with contextlib.suppress(Exception):
                for task in self.ctr("tasks", "ls", "-q", timeout=30).stdout.split():
                    self.ctr("tasks", "kill", "-s", "KILL", task, timeout=30)
        self.stop("containerd")
        for _ in range(3):
            leftovers = set(self.node_pids()) | set(self.processes_in_namespace())
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not leftovers:
                break
            time.sleep(1)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(10)
            self.holder = None
        for root in cgroups.hierarchy_roots(mountinfo.read()):
            for name in (self.cgroup_root, self.server_cgroup):
                group = Path(root, name)
                _remove_cgroup(group)
                if group.exists():
                    problems.append(f"cgroup left: {group}")
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        mounted = [
            e.mount_point for e in mountinfo.read() if e.mount_point.startswith(str(self.work))
        ]
        if mounted:
            problems.append(f"mounts left under {self.work}: {mounted}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        problems += [f"process left: {pid}" for pid in self.node_pids()]
        return problems


@contextlib.contextmanager
def running(bin_dir: Path, logs: Path) -> Iterator[Cluster]:
    """A started cluster, torn down whatever happens; its logs are copied to ``logs``."""
    cluster = Cluster(bin_dir)
    try:
        cluster.up()
        yield cluster
    except BaseException:
        cluster.save_logs(logs)
        cluster.down()  # the failure that brought us here is the one to see
        raise
    cluster.save_logs(logs)
    problems = cluster.down()
    assert not problems, problems
