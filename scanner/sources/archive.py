"""Images on disk, no engine involved: `docker-archive:` and `oci-archive:` tarballs (either layout
is read from either kind: `docker save` writes both since Docker 25), and `oci-dir:` OCI image
layout directories as kaniko `--oci-layout-path`, buildah and skopeo write them. Layers are served
straight out of the file they are in: never extracted, never copied (a gzipped tarball aside)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import TYPE_CHECKING, Any

from ..errors import FileSystemError, ScanError, UsageError
from ..models import Image, Layer
from ..names import chain_ids
from . import platforms

if TYPE_CHECKING:
    from ..archive import LayerFiles
    from . import Options, Pending


def targets(kind: str, path: str, stack: ExitStack, options: Options) -> list[Pending]:
    from .. import archive
    from . import Target

    found: list[Any]
    if kind == "oci-dir":
        # Its layers are files already: they are served as they are, never copied.
        found = read_oci_dir(path, options.platform)
    elif options.per_layer:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-"))
        found = archive.read_archive(path, workdir, options.platform)
    else:
        from . import distill

        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="clair-scan-"))
        found = distill.read_archive(path, workdir, stack)
    pending: list[Pending] = []
    for item in found:

        def ready(_workdir: str, files: LayerFiles = item.files) -> AbstractContextManager[LayerFiles]:
            return nullcontext(files)  # already on disk: nothing to export

        pending.append((item.image.name, Target(item.image, ready)))
    return pending


def read_oci_dir(spec: str, platform: str | None) -> list[Any]:
    """Every image an OCI layout directory's index names (`PATH:REF` picks the one tagged REF)."""
    from ..archive import ArchiveImage, Blob, LayerFiles, history_from_config

    path, wanted = spec, None
    if not os.path.isdir(path) and ":" in spec:
        path, _, wanted = spec.rpartition(":")
    if not os.path.exists(path):
        raise UsageError(f"OCI layout not found: {path}")
    if not os.path.isdir(path):
        raise UsageError(f"not an OCI layout directory: {path}", hint="use oci-archive: for a tarball")

    def blob_path(desc: dict[str, Any]) -> str:
        algo, _, hexdigest = str(desc["digest"]).partition(":")
        if not algo.isalnum() or not hexdigest.isalnum():
            raise ValueError(f"invalid digest {desc['digest']!r}")
        return os.path.join(path, "blobs", algo, hexdigest)

    def load(desc: dict[str, Any]) -> Any:
        with open(blob_path(desc), "rb") as handle:
            return json.load(handle)

    try:
        with open(os.path.join(path, "index.json"), "rb") as handle:
            index = json.load(handle)
        images = []
        for desc in index.get("manifests") or []:
            annotations = desc.get("annotations") or {}
            tag = annotations.get("org.opencontainers.image.ref.name") or annotations.get(
                "io.containerd.image.name"
            )
            if wanted is not None and tag != wanted:
                continue
            manifest = load(desc)
            name = f"{path}:{tag}" if tag else path
            if desc.get("mediaType") in platforms.INDEXES or "manifests" in manifest:
                manifest = load(platforms.choose(manifest, platform, name))
            config_desc = manifest["config"]
            config = load(config_desc)
            diff_ids = list(config["rootfs"]["diff_ids"])
            layer_descs = list(manifest["layers"])
            if not diff_ids or len(diff_ids) != len(layer_descs):
                raise ValueError(f"{name}: the config's layers do not match the manifest's")
            created_by = history_from_config(config.get("history") or [], len(diff_ids))
            layers = tuple(
                Layer(i, d, c, created_by[i], str(layer_descs[i]["digest"]))
                for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True))
            )
            files = LayerFiles(len(layers))
            for i, layer_desc in enumerate(layer_descs):
                platforms.check_layer_type(str(layer_desc.get("mediaType", "")), name, i)
                blob = blob_path(layer_desc)
                files.put(i, Blob(blob, 0, os.path.getsize(blob)))
            files.finish()
            images.append(ArchiveImage(Image(name=name, id=str(config_desc["digest"]), layers=layers), files))
    except ScanError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(f"{path} is not a complete OCI layout: {exc.filename} is missing") from None
    except PermissionError as exc:
        raise FileSystemError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a readable OCI layout: {exc}") from None
    except OSError as exc:
        raise FileSystemError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not images:
        raise UsageError(f"{path} holds no image" + (f" tagged {wanted}" if wanted else ""))
    return images
