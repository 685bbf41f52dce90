"""Build hook: generate the CSI gRPC stubs from proto/ with the pinned grpcio-tools.

The stubs are not committed (they pin a protobuf runtime). ``build_py`` writes them
into ``csi_driver/generated/``: into the source tree for editable installs (``pip
install -e``), into the build directory for wheels. The .proto files are copied
under ``csi_driver/generated/`` first so that the generated modules import each
other as ``csi_driver.generated.*``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("csi.proto", "health.proto")
PACKAGE = os.path.join("csi_driver", "generated")


def generate(out_root: str) -> None:
    """Run grpc_tools.protoc on every file in PROTOS, writing ``<out_root>/csi_driver/generated``."""
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as scratch:
        os.makedirs(os.path.join(scratch, PACKAGE))
        for name in PROTOS:
            shutil.copy(os.path.join(HERE, "proto", name), os.path.join(scratch, PACKAGE, name))
        package_dir = os.path.join(out_root, PACKAGE)
        os.makedirs(package_dir, exist_ok=True)
        for name in PROTOS:
            args = [
                "grpc_tools.protoc",
                f"-I{scratch}",
                f"-I{include}",
                f"--python_out={out_root}",
                f"--pyi_out={out_root}",
                f"--grpc_python_out={out_root}",
                os.path.join(PACKAGE, name),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"grpc_tools.protoc failed on proto/{name}")
        with open(os.path.join(package_dir, "__init__.py"), "w") as handle:
            handle.write('"""Stubs generated from proto/ at build time (not committed)."""\n')


class BuildWithStubs(build_py):
    """build_py that generates the gRPC stubs first."""

    def run(self) -> None:
        if self.editable_mode:
            generate(HERE)
        super().run()
        if not self.editable_mode:
            generate(self.build_lib)


setup(cmdclass={"build_py": BuildWithStubs})
