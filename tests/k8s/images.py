"""Container images for the test node, made with no registry.

``oci_archive`` writes a one-layer OCI image archive that ``ctr images import``
accepts (``index.json`` carries the image name). The node runs the pause image
(a static ``pause`` built from ``pause.c``), a busybox image for the pods, the
CSI sidecars under the exact names the chart uses, and hepvol's node image built
by ``images/local/build`` in a private dockerd and exported with ``docker save``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAUSE = "registry.k8s.io/pause:3.10"
BUSYBOX = "docker.io/library/busybox:local"
#: Sidecar binary (in the build cache) -> the image the chart names.
SIDECARS = {
    "csi-node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0",
    "livenessprobe": "registry.k8s.io/sig-storage/livenessprobe:v2.15.0",
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v5.2.0",
}


def _file(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def _layer(files: Sequence[tuple[Path, str]], busybox: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "root"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        _file(
            archive,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        _file(archive, "etc/group", b"root:x:0:\nnobody:x:65534:\n")
        if busybox:
            files = [*files, (Path("/bin/busybox"), "bin/busybox")]
            applets = subprocess.run(
                ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
            ).stdout.split()
            for applet in applets:
                if applet != "busybox":
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    archive.addfile(link)
        for source, destination in files:
            _file(archive, destination.lstrip("/"), source.read_bytes(), 0o755)
    return buffer.getvalue()


def oci_archive(
    name: str,
    out: Path,
    files: Sequence[tuple[Path, str]] = (),
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    busybox: bool = False,
) -> Path:
    """Write image ``name`` (one layer with ``files``: (source, path in image)) to ``out``."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    layer = blob(_layer(files, busybox), "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }  # fmt: skip
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [layer],
    }  # fmt: skip
    described = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    described["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    described["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [described],
    }
    with tarfile.open(out, "w") as archive:
        _file(archive, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _file(archive, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            _file(archive, f"blobs/sha256/{digest}", data)
    return out


def base_images(bin_dir: Path, out: Path) -> list[Path]:
    """pause, busybox and the sidecars as archives in ``out``."""
    pause = out / "pause"
    subprocess.run(["gcc", "-Os", "-static", "-o", str(pause), str(HERE / "pause.c")], check=True)
    archives = [
        oci_archive(PAUSE, out / "pause.tar", [(pause, "pause")], entrypoint=["/pause"]),
        oci_archive(BUSYBOX, out / "busybox.tar", busybox=True, cmd=["sh"]),
    ]
    for binary, image in SIDECARS.items():
        archives.append(
            oci_archive(
                image,
                out / f"{binary}.tar",
                [(bin_dir / binary, binary)],
                entrypoint=[f"/{binary}"],
            )
        )
    return archives
