"""The Docker plugin driven by a real dockerd through the real ``docker`` CLI."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from docker_plugin.stale import drop_stale
from tests.conftest import SAMPLE, HepvolEnv, wait_for
from tests.e2e.dockerd import IMAGE, Dockerd, Plugin, make_plugin

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def plugin(hepvol_env: HepvolEnv, dockerd: Dockerd) -> Iterator[Plugin]:
    yield from make_plugin(hepvol_env, dockerd)


@pytest.fixture
def plugin_with_grace(hepvol_env: HepvolEnv, dockerd: Dockerd) -> Iterator[Plugin]:
    yield from make_plugin(hepvol_env, dockerd, idle=4.0)


def _volume(plugin: Plugin, name: str) -> list[str]:
    return ["-v", f"{name}:/cvmfs/{name}", "--volume-driver", plugin.driver]


def _detached(plugin: Plugin, name: str, *command: str) -> str:
    result = plugin.engine.docker(
        "run", "-d", "--network", "none", *_volume(plugin, name), IMAGE, *command
    )
    return result.stdout.strip()


def _consumers(plugin: Plugin) -> dict[str, int]:
    return {str(b["source"]): len(b["consumers"]) for b in plugin.backings()}  # type: ignore[arg-type]


def test_created_volume_shows_the_repository_in_a_container(plugin: Plugin) -> None:
    docker = plugin.engine.docker
    docker("volume", "create", "-d", plugin.driver, SAMPLE)
    assert plugin.run(_volume(plugin, SAMPLE), "cat", f"/cvmfs/{SAMPLE}/README") == "sample trunk\n"
    mount = (
        f"type=volume,source={SAMPLE},target=/cvmfs/{SAMPLE},volume-driver={plugin.driver},"
        "volume-nocopy,readonly"
    )
    listing = plugin.run(["--mount", mount], "ls", f"/cvmfs/{SAMPLE}/data")
    assert listing.split() == ["events.csv"]
    refused = plugin.run(
        ["--mount", mount], "sh", "-c", f"echo x > /cvmfs/{SAMPLE}/new", check=False
    )
    assert "Read-only file system" in refused
    assert wait_for(lambda: plugin.backings() == []), "the last container released the mount"


def test_pinned_tag_volume_shows_the_tag(plugin: Plugin) -> None:
    plugin.engine.docker("volume", "create", "-d", plugin.driver, f"{SAMPLE}@v1")
    out = plugin.run(
        ["-v", f"{SAMPLE}@v1:/sw", "--volume-driver", plugin.driver], "cat", "/sw/README"
    )
    assert out == "sample v1\n"
    options = ["volume", "create", "-d", plugin.driver, "-o", "tag=v1", "pinned"]
    refused = plugin.engine.docker(*options, check=False)
    assert "invalid repository" in refused.stderr, "the name is the repository"


def test_implicit_create_by_docker_run(plugin: Plugin) -> None:
    assert plugin.run(_volume(plugin, SAMPLE), "cat", f"/cvmfs/{SAMPLE}/README") == "sample trunk\n"
    listed = plugin.engine.docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout
    assert listed.split() == [SAMPLE]


def test_two_containers_share_one_backing_mount_released_after_grace(
    plugin_with_grace: Plugin,
) -> None:
    plugin = plugin_with_grace
    first = _detached(plugin, SAMPLE, "sleep", "300")
    second = _detached(plugin, SAMPLE, "sleep", "300")
    assert _consumers(plugin) == {SAMPLE: 2}
    inspect = plugin.engine.docker("volume", "inspect", SAMPLE).stdout
    assert "/mounts/cvmfs-sample.hepvol.org" in inspect and '"mounts": 2' in inspect
    plugin.engine.docker("rm", "-f", first)
    assert _consumers(plugin) == {SAMPLE: 1}
    plugin.engine.docker("rm", "-f", second)
    assert _consumers(plugin) == {SAMPLE: 0}, "kept for the grace period"
    assert wait_for(lambda: plugin.backings() == [], 15), "released after the grace period"
    inspect = plugin.engine.docker("volume", "inspect", SAMPLE).stdout
    assert '"Mountpoint": ""' in inspect


def test_container_keeps_reading_when_the_plugin_is_killed(plugin: Plugin) -> None:
    docker = plugin.engine.docker
    docker("volume", "create", "-d", plugin.driver, SAMPLE)
    reader = _detached(
        plugin,
        SAMPLE,
        "sh",
        "-c",
        f"while cat /cvmfs/{SAMPLE}/README >/dev/null; do sleep 0.1; done",
    )
    plugin.kill9()
    time.sleep(1)
    assert docker("exec", reader, "cat", f"/cvmfs/{SAMPLE}/README").stdout == "sample trunk\n"
    assert docker("inspect", "-f", "{{.State.Running}}", reader).stdout.strip() == "true"
    plugin.start()
    assert SAMPLE in docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout.split()
    assert plugin.driver in docker("volume", "inspect", SAMPLE).stdout
    assert plugin.run(_volume(plugin, SAMPLE), "cat", f"/cvmfs/{SAMPLE}/README") == "sample trunk\n"
    assert wait_for(lambda: _consumers(plugin) == {SAMPLE: 1}), "the reader's hold survived"
    docker("rm", "-f", reader)
    assert wait_for(lambda: plugin.backings() == [])


def test_volumes_are_still_listed_after_dockerd_restarts(plugin: Plugin) -> None:
    docker = plugin.engine.docker
    docker("volume", "create", "-d", plugin.driver, SAMPLE)
    docker("volume", "create", "-d", plugin.driver, f"{SAMPLE}@v1")
    plugin.engine.restart()
    listed = docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout.split()
    assert sorted(listed) == [SAMPLE, f"{SAMPLE}@v1"]
    assert plugin.run(_volume(plugin, SAMPLE), "cat", f"/cvmfs/{SAMPLE}/README") == "sample trunk\n"


def test_removing_a_volume_in_use_shows_the_plugins_error(plugin: Plugin) -> None:
    docker = plugin.engine.docker
    docker("volume", "create", "-d", plugin.driver, SAMPLE)
    # A mount this engine does not know about (another engine, a lost Unmount):
    # dockerd lets the remove through and the plugin must refuse it.
    held = plugin.call("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "elsewhere"})
    assert held["Err"] == ""
    refused = docker("volume", "rm", SAMPLE, check=False)
    assert refused.returncode != 0
    assert "in use by 1 mount" in refused.stderr and "stop or remove" in refused.stderr
    reader = _detached(plugin, SAMPLE, "sleep", "300")
    assert docker("volume", "rm", SAMPLE, check=False).returncode != 0
    docker("rm", "-f", reader)
    listed = docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout.split()
    assert listed == [SAMPLE], "refused removes removed nothing"
    plugin.call("VolumeDriver.Unmount", {"Name": SAMPLE, "ID": "elsewhere"})
    docker("volume", "rm", SAMPLE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "foo=bar", SAMPLE], "valid options are: tag, hash, date, clientConfig"),
        (["Not_A_Repo"], 'invalid repository "Not_A_Repo"'),
        ([f"{SAMPLE}@"], "use repo, repo@tag or repo#hash"),
        ([f"{SAMPLE}#nothex"], "invalid hash"),
        (["-o", "tag=a", "-o", "hash=" + "a" * 40, SAMPLE], "give only one of tag, hash, date"),
    ],
)
def test_bad_names_and_options_are_refused_clearly(
    plugin: Plugin, args: list[str], message: str
) -> None:
    refused = plugin.engine.docker("volume", "create", "-d", plugin.driver, *args, check=False)
    assert refused.returncode != 0
    assert message in refused.stderr
    assert plugin.engine.docker("volume", "ls", "-q", "-f", f"driver={plugin.driver}").stdout == ""
    assert plugin.backings() == []


def test_run_with_a_bad_or_unknown_volume_fails_and_mounts_nothing(plugin: Plugin) -> None:
    bad = plugin.run(["-v", "bad..name:/v", "--volume-driver", plugin.driver], "true", check=False)
    assert "invalid volume name" in bad
    missing = plugin.run(_volume(plugin, "missing.cern.ch"), "true", check=False)
    assert "missing.cern.ch is not available on this node" in missing
    assert plugin.backings() == []


def test_stale_docker_consumers_are_dropped_against_the_engine(plugin: Plugin) -> None:
    docker = plugin.engine.docker
    reader = _detached(plugin, SAMPLE, "sleep", "300")
    assert plugin.call("VolumeDriver.Mount", {"Name": SAMPLE, "ID": "lost"})["Err"] == ""
    manager = plugin.env.manager()
    assert drop_stale(manager, plugin.engine.host).dropped == {}, "young consumers are kept"
    unreachable = drop_stale(manager, "unix:///nonexistent.sock", now=time.time() + 3600)
    assert unreachable.error and unreachable.dropped == {}
    report = drop_stale(manager, plugin.engine.host, now=time.time() + 3600)
    assert sum(len(v) for v in report.dropped.values()) == 1
    assert _consumers(plugin) == {SAMPLE: 1}, "the running container keeps its hold"
    assert docker("exec", reader, "cat", f"/cvmfs/{SAMPLE}/README").stdout == "sample trunk\n"
    gc = subprocess.run(
        [sys.executable, "-m", "hepvol", "gc", "--json"],
        env={**plugin.env.environ(), "DOCKER_HOST": plugin.engine.host},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert '"docker-plugin"' in gc.stdout
    docker("rm", "-f", reader)
    # Which hold was dropped cannot be known (mount IDs are not in the API); the
    # count was right, and the next pass drops whatever is left once nobody runs.
    assert _consumers(plugin) in ({}, {SAMPLE: 1})
    drop_stale(manager, plugin.engine.host, now=time.time() + 3600)
    assert plugin.backings() == []


@pytest.fixture
def eos_plugin(hepvol_env: HepvolEnv, dockerd: Dockerd) -> Iterator[Plugin]:
    hepvol_env.make_repo("eosdemo", {"experiment/run1/events.txt": "eos events\n"})
    yield from make_plugin(hepvol_env, dockerd, backend="eos")


def test_eos_volume_shows_its_path_in_a_container(eos_plugin: Plugin) -> None:
    plugin = eos_plugin
    plugin.engine.docker("volume", "create", "-d", plugin.driver, "-o", "instance=eosdemo",
                         "-o", "path=/experiment", "run-data")  # fmt: skip
    out = plugin.run(["-v", "run-data:/data", "--volume-driver", plugin.driver],
                     "cat", "/data/run1/events.txt")  # fmt: skip
    assert out == "eos events\n"
    implicit = plugin.run(["-v", "nothing-given:/data", "--volume-driver", plugin.driver], "true",
                          check=False)  # fmt: skip
    assert "instance" in implicit and "is required for EOS volumes" in implicit
    assert wait_for(lambda: plugin.backings() == [])


def test_socket_is_root_only_and_a_live_one_is_never_taken_over(plugin: Plugin) -> None:
    info = plugin.socket.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_uid == 0
    assert stat.S_IMODE(plugin.socket.parent.stat().st_mode) == 0o755
    second = subprocess.run(
        [sys.executable, "-m", "hepvol", "docker-plugin", "--driver", "cvmfs",
         "--name", plugin.driver],
        env=plugin.env.environ(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"--socket {plugin.socket}: another process (pid" in second.stderr
    assert plugin.answers(), "the first plugin still serves"


def test_a_stale_socket_is_replaced(plugin: Plugin) -> None:
    plugin.kill9()
    assert plugin.socket.exists(), "kill -9 leaves the socket behind"
    plugin.start()
    assert plugin.call("VolumeDriver.List") == {"Volumes": [], "Err": ""}
