"""No shell anywhere: the source is scanned with ``ast`` for every way of starting one.

Refused: ``shell=`` anything but ``False``, ``os.system``, ``os.popen``,
``subprocess.getoutput``/``getstatusoutput``, and a ``subprocess`` call whose command
is a single string (an argv is always a list built from validated values; the
review of each argv is in docs/security.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("mount_core", "docker_plugin", "flexvolume", "csi_driver", "bench", "tests", "images",
            "deploy")  # fmt: skip
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
SUBPROCESS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
              "subprocess.check_output"}  # fmt: skip


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def shell_uses(source: str, filename: str) -> list[str]:
    """Every place in ``source`` that could start a shell, as ``file:line: why``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        where = f"{filename}:{node.lineno}"
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where}: shell=")
        if name in SHELL_CALLS:
            found.append(f"{where}: {name}")
        if (
            name in SUBPROCESS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            found.append(f"{where}: {name} with a command string")
    return found


def project_sources() -> list[Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    return [p for p in files if "generated" not in p.parts] + [REPO / "setup.py"]


def test_the_scanner_finds_each_way_to_a_shell() -> None:
    planted = (
        "import os, subprocess\n"
        "subprocess.run('ls', shell=True)\n"
        "os.system('ls')\n"
        "os.popen('ls')\n"
        "subprocess.check_output(f'ls {x}')\n"
        "subprocess.run(['ls'], shell=flag)\n"
        "subprocess.run(['ls'], shell=False)\n"
    )
    assert [hit.split(": ", 1)[1] for hit in shell_uses(planted, "x.py")] == [
        "shell=", "subprocess.run with a command string", "os.system", "os.popen",
        "subprocess.check_output with a command string", "shell=",
    ]  # fmt: skip


def test_no_source_file_starts_a_shell() -> None:
    sources = project_sources()
    assert len(sources) > 50, "the scan must see the project"
    found = [hit for path in sources for hit in shell_uses(path.read_text(), str(path))]
    assert found == []
