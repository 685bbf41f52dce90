"""The FlexVolume drivers, called exactly as kubelet calls them.

Every call is a separate process running the *installed* launcher with a clean
environment (kubelet's is minimal), and every reply is checked against the
protocol: exactly one JSON object on stdout, nothing on stderr, exit status 0
unless the status is Failure. Mounts are real (the embedded FUSE server and
bind mounts), and each test checks mountinfo for what is left.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flexvolume import install
from mount_core.mountinfo import MountTable
from tests.conftest import SAMPLE, HepvolEnv, hepvol_cli, wait_for

POD_UID = "6f1c2a8e-3b9d-4c57-9e0a-1d2b3c4d5e6f"


def kubelet_options(pod: str = "analysis", **user: str) -> dict[str, str]:
    """The option map kubelet sends for the seed pod spec, plus the user's options."""
    return {
        "kubernetes.io/fsType": "",
        "kubernetes.io/readwrite": "ro",
        "kubernetes.io/pvOrVolumeName": "cvmfs-sample",
        "kubernetes.io/pod.name": pod,
        "kubernetes.io/pod.namespace": "physics",
        "kubernetes.io/pod.uid": POD_UID,
        "kubernetes.io/serviceAccount.name": "default",
        **user,
    }


class Kubelet:
    """Replays kubelet's side of the protocol against the installed drivers."""

    def __init__(self, env: HepvolEnv) -> None:
        self.env = env
        self.plugins = env.workdir / "plugins"
        install.install(str(self.plugins), str(env.workdir / "config.toml"))
        self.root = env.targets / "kubelet"
        self.root.mkdir()

    def driver(self, name: str = "cvmfs") -> str:
        return install.driver_path(str(self.plugins), name)

    def call(self, *args: str, driver: str = "cvmfs", timeout: float = 60) -> dict[str, Any]:
        result = subprocess.run(
            [self.driver(driver), *args], env={}, capture_output=True, timeout=timeout, check=False
        )
        ended = _how_it_ended(result.returncode)
        assert result.stderr == b"", f"kubelet parses stdout and stderr together ({ended})"
        lines = result.stdout.decode().splitlines()
        assert len(lines) == 1, f"exactly one line of output, got {result.stdout!r} ({ended})"
        reply = json.loads(lines[0])
        assert isinstance(reply, dict) and reply["status"] in (
            "Success",
            "Failure",
            "Not supported",
        )
        assert (result.returncode != 0) == (reply["status"] == "Failure"), (
            result.returncode,
            reply,
        )
        if "message" in reply:
            assert "\n" not in reply["message"]
        return reply

    def pod_dir(self, uid: str = POD_UID, name: str = "cvmfs", driver: str = "cvmfs") -> Path:
        """Create the pod's volume dir as kubelet does before ``mount`` (0750)."""
        path = self.root / "pods" / uid / "volumes" / f"cern~{driver}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o750)
        return path

    def mount(
        self, path: Path, options: dict[str, str], driver: str = "cvmfs", timeout: float = 60
    ) -> dict[str, Any]:
        return self.call("mount", str(path), json.dumps(options), driver=driver, timeout=timeout)

    def unmount(self, path: Path, driver: str = "cvmfs", timeout: float = 60) -> dict[str, Any]:
        return self.call("unmount", str(path), driver=driver, timeout=timeout)

    def mounts(self) -> list[str]:
        return [e.mount_point for e in MountTable().under(str(self.env.workdir))]

    def status(self) -> list[dict[str, Any]]:
        result = hepvol_cli(self.env, "status", "--json")
        assert result.returncode == 0, result.stderr
        mounts: list[dict[str, Any]] = json.loads(result.stdout)["backing_mounts"]
        return mounts


def _how_it_ended(returncode: int) -> str:
    """The driver's exit status, or the signal that killed it, for assertion messages."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@pytest.fixture
def kubelet(hepvol_env: HepvolEnv) -> Kubelet:
    return Kubelet(hepvol_env)


def test_init_declares_every_capability_false(kubelet: Kubelet) -> None:
    for driver in ("cvmfs", "eos"):
        reply = kubelet.call("init", driver=driver)
        assert reply == {
            "status": "Success",
            "capabilities": {
                "attach": False,
                "selinuxRelabel": False,
                "fsGroup": False,
                "supportsMetrics": False,
                "requiresFSResize": False,
            },
        }


@pytest.mark.parametrize(
    "call",
    [["getvolumename", "{}"], ["attach", "{}", "node"], ["detach", "pv", "node"],
     ["waitforattach", "/dev/x", "{}"], ["isattached", "{}", "node"],
     ["mountdevice", "/d", "/dev/x", "{}"], ["unmountdevice", "/d"],
     ["expandvolume", "{}", "1", "2"], ["expandfs", "{}", "/d", "1", "2"], ["futurecall"]],
)  # fmt: skip
def test_other_calls_are_not_supported(kubelet: Kubelet, call: list[str]) -> None:
    assert kubelet.call(*call) == {"status": "Not supported"}


def test_pod_lifecycle_as_kubelet_drives_it(kubelet: Kubelet) -> None:
    assert kubelet.call("init")["status"] == "Success"
    pod = kubelet.pod_dir()
    reply = kubelet.mount(pod, kubelet_options(repository=SAMPLE))
    assert reply["status"] == "Success", reply
    assert (pod / "README").read_text() == "sample trunk\n"
    assert (pod / "data" / "events.csv").read_text().startswith("run,event")
    entry = MountTable().at(str(pod))
    assert entry is not None and entry.readonly
    with pytest.raises(OSError) as info:
        (pod / "x").write_text("x")
    assert info.value.errno == errno.EROFS

    [backing] = kubelet.status()
    [consumer] = backing["consumers"]
    assert consumer["id"] == f"flex:{pod}"
    assert consumer["info"]["pod"] == "physics/analysis"
    assert consumer["info"]["pod_uid"] == POD_UID
    table = hepvol_cli(kubelet.env, "status").stdout
    assert "pod physics/analysis" in table

    assert kubelet.unmount(pod) == {"status": "Success", "message": "unmounted"}
    assert pod.is_dir() and not os.path.ismount(pod), "kubelet removes the dir itself"
    pod.rmdir()
    assert kubelet.mounts() == []
    assert kubelet.status() == []
    log = Path(kubelet.env.config.state_dir) / "logs" / "flexvolume.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(line["msg"] == "mount" and line["pod"] == "physics/analysis" for line in lines)


def test_legacy_mount_form_takes_the_last_argument_as_options(kubelet: Kubelet) -> None:
    pod = kubelet.pod_dir()
    reply = kubelet.call(
        "mount", str(pod), "/dev/null", json.dumps(kubelet_options(repository=SAMPLE))
    )
    assert reply["status"] == "Success", reply
    assert (pod / "README").read_text() == "sample trunk\n"
    assert kubelet.unmount(pod)["status"] == "Success"
    assert kubelet.mounts() == []


def test_pinned_tag_and_unknown_keys_are_tolerated(kubelet: Kubelet) -> None:
    pod = kubelet.pod_dir()
    options = kubelet_options(repository=SAMPLE, tag="v1")
    options["kubernetes.io/mounterArgs.FsGroup"] = "1000"
    options["someFutureKey"] = "whatever"
    assert kubelet.mount(pod, options)["status"] == "Success"
    assert (pod / "README").read_text() == "sample v1\n"
    assert kubelet.unmount(pod)["status"] == "Success"


def test_twenty_pods_share_one_backing_mount(kubelet: Kubelet) -> None:
    pods = [kubelet.pod_dir(uid=f"uid-{n:02d}") for n in range(20)]
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(
            lambda n: kubelet.mount(pods[n], kubelet_options(pod=f"job-{n}", repository=SAMPLE)),
            range(20),
        ))  # fmt: skip
    assert [r["status"] for r in replies] == ["Success"] * 20, replies
    [backing] = kubelet.status()
    assert len(backing["consumers"]) == 20
    assert {c["info"]["pod"] for c in backing["consumers"]} == {
        f"physics/job-{n}" for n in range(20)
    }
    assert all((pod / "README").read_text() == "sample trunk\n" for pod in pods)
    fuse = [e for e in MountTable().under(kubelet.env.config.mount_root)]
    assert len(fuse) == 1, "one FUSE mount serves every pod"

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(kubelet.unmount, pods))
    assert [r["status"] for r in replies] == ["Success"] * 20, replies
    assert kubelet.status() == []
    assert kubelet.mounts() == []


def test_unmount_after_a_kubelet_restart_knows_only_the_path(kubelet: Kubelet) -> None:
    pod = kubelet.pod_dir()
    assert kubelet.mount(pod, kubelet_options(repository=SAMPLE))["status"] == "Success"
    # A restarted kubelet re-discovers the dir and calls unmount with the path
    # alone, possibly more than once, and for dirs that were never mounted.
    assert kubelet.unmount(pod) == {"status": "Success", "message": "unmounted"}
    assert kubelet.unmount(pod) == {"status": "Success", "message": "nothing was mounted"}
    never = kubelet.pod_dir(uid="never-mounted")
    assert kubelet.unmount(never)["status"] == "Success"
    assert kubelet.unmount(kubelet.root / "pods" / "gone" / "volumes" / "x")["status"] == "Success"
    assert kubelet.mounts() == []


def test_unmount_of_a_dead_fuse_mount_succeeds_and_leaves_nothing(kubelet: Kubelet) -> None:
    pods = [kubelet.pod_dir(uid=f"uid-{n}") for n in range(2)]
    for pod in pods:
        assert kubelet.mount(pod, kubelet_options(repository=SAMPLE))["status"] == "Success"
    pids = kubelet.env.server_pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: _errno(pods[0] / "README") == errno.ENOTCONN)
    for pod in pods:
        assert kubelet.unmount(
            pod,
        ) == {"status": "Success", "message": "unmounted"}
        pod.rmdir()
    assert kubelet.mounts() == []
    assert kubelet.status() == []


def test_calls_return_promptly_while_the_fuse_server_hangs(kubelet: Kubelet) -> None:
    pods = [kubelet.pod_dir(uid=f"uid-{n}") for n in range(3)]
    for pod in pods[:2]:
        assert kubelet.mount(pod, kubelet_options(repository=SAMPLE))["status"] == "Success"
    [pid] = kubelet.env.server_pids()
    os.kill(pid, signal.SIGSTOP)  # a hung server: requests to it never answer
    try:
        assert kubelet.mount(pods[2], kubelet_options(repository=SAMPLE), timeout=20)["status"] == (
            "Success"
        )
        for pod in pods:
            assert kubelet.unmount(pod, timeout=20)["status"] == "Success"
        assert kubelet.mounts() == []
    finally:
        os.kill(pid, signal.SIGKILL)


def _errno(path: Path) -> int | None:
    try:
        path.read_text()
    except OSError as exc:
        return exc.errno
    return None


def test_launcher_works_under_env_i(kubelet: Kubelet) -> None:
    pod = kubelet.pod_dir()
    options = json.dumps(kubelet_options(repository=SAMPLE))
    for args in (["init"], ["mount", str(pod), options], ["unmount", str(pod)]):
        result = subprocess.run(["/usr/bin/env", "-i", kubelet.driver(), *args], cwd="/",
                                capture_output=True, check=False, timeout=60)  # fmt: skip
        assert result.returncode == 0 and result.stderr == b"", result
        assert json.loads(result.stdout)["status"] == "Success"
    assert kubelet.mounts() == []


def test_install_is_atomic_and_uninstall_removes_the_drivers(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    plugins = tmp_path / "exec"
    for _ in range(2):  # reinstalling replaces in place
        result = hepvol_cli(kubelet.env, "flexvolume", "install", "--plugin-dir", str(plugins))
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in plugins.iterdir()) == ["cern~cvmfs", "cern~eos"]
    for name in ("cvmfs", "eos"):
        folder = plugins / f"cern~{name}"
        assert [p.name for p in folder.iterdir()] == [name], "no .tmp_ file is left behind"
        driver = folder / name
        assert driver.stat().st_mode & 0o777 == 0o755
        first = driver.read_text().splitlines()[0]
        assert first.startswith("#!/") and first.endswith(" -IS")
        assert str(kubelet.env.workdir / "config.toml") in driver.read_text()
    result = hepvol_cli(
        kubelet.env, "flexvolume", "install", "--plugin-dir", str(plugins), "--uninstall"
    )
    assert result.returncode == 0, result.stderr
    assert list(plugins.iterdir()) == []


def test_a_call_imports_nothing_heavy(kubelet: Kubelet) -> None:
    """Each call is a fresh process: the daemons' dependencies stay off its path."""
    pod = kubelet.pod_dir()
    options = json.dumps(kubelet_options(repository=SAMPLE))
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(Path(__file__).resolve().parents[2])!r}]\n"
        "from flexvolume.driver import Call\n"
        f"call = Call('cvmfs', {str(kubelet.env.workdir / 'config.toml')!r})\n"
        "for argv in sys.argv[1:]:\n"
        "    assert call.run(argv.split('\\t'))['status'] == 'Success'\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-IS", "-c", script, f"mount\t{pod}\t{options}", f"unmount\t{pod}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    heavy = {"grpc", "flask", "gunicorn", "prometheus_client", "psutil", "pyfuse3", "trio",
             "docker", "google.protobuf"}  # fmt: skip
    assert loaded & heavy == set()
    assert kubelet.mounts() == []


def test_showcase_for_make_run_replays_a_pod(
    hepvol_env: HepvolEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    from flexvolume.showcase import show
    from hepvol.status import as_table
    from mount_core.manager import MountManager

    def status() -> str:
        return as_table(MountManager(hepvol_env.config).status())

    assert show(hepvol_env.config, str(hepvol_env.workdir), status) is True
    out = capsys.readouterr().out
    assert '"status": "Success"' in out and "pod demo/analysis" in out and "README" in out
    assert [e for e in MountTable().under(str(hepvol_env.workdir))] == []
