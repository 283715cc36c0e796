#!/usr/bin/env python3
"""Writes a one-layer OCI image archive from a root file system directory.

No Docker engine or registry is reachable on the machines this project is
tested on, so the local node's images (hookrelay, the pod sandbox) are
written here and imported with `ctr images import`. The layer is the
directory as a reproducible tar: owner root, fixed times, sorted names.

    oci-image.py ROOTFS OUT.tar NAME --entrypoint /hookrelay --user 65532:65532
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def layer_tar(rootfs: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in dirs + sorted(files):
                path = os.path.join(top, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rootfs")
    p.add_argument("out")
    p.add_argument("name", help="the full reference, e.g. docker.io/library/hookrelay:e2e")
    p.add_argument("--entrypoint", required=True)
    p.add_argument("--user", default="")
    a = p.parse_args()

    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def dumps(value: dict) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    layer = blob(layer_tar(a.rootfs), "application/vnd.oci.image.layer.v1.tar")
    config = blob(
        dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [a.entrypoint], "User": a.user, "Env": ["PATH=/bin:/"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        }),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = blob(
        dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        }),
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest["annotations"] = {
        "io.containerd.image.name": a.name,
        "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest],
    }

    with tarfile.open(a.out, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", dumps({"imageLayoutVersion": "1.0.0"}))
        add("index.json", dumps(index))
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.split(":", 1)[1], data)


if __name__ == "__main__":
    main()
