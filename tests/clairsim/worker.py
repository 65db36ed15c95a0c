"""Indexing and reading layers: Clair's worker.go (ProcessLayer) and the layer part of its datastore."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from . import detect, tarstream
from .fetch import DownloadRecord, FetchError, open_layer
from .logs import Logger
from .model import (
    COULD_NOT_FIND_LAYER,
    ENGINE_VERSION,
    MAX_NAME,
    PARENT_UNKNOWN,
    UNSUPPORTED,
    ApiError,
    BackendError,
    BadRequest,
    FeatureKey,
    NotFound,
    Unprocessable,
)
from .store import Store, StoredLayer
from .versions import is_valid

_URL_PARAMETERS = re.compile(r"(\?|\&)([^=]+)\=([^ &]+)")
EXTRACTORS = ("docker", "aci")


def clean_url(url: str) -> str:
    """Clair's cleanURL: strip query parameters (tokens) before logging a layer path."""
    return _URL_PARAMETERS.sub("", url)


class Worker:
    def __init__(
        self,
        store: Store,
        logger: Logger,
        *,
        insecure_tls: bool = False,
        on_download: Callable[[DownloadRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.logger = logger
        self.insecure_tls = insecure_tls
        self.on_download = on_download or (lambda record: None)

    # POST /v1/layers

    def process_layer(
        self, image_format: str, name: str, parent_name: str, path: str, headers: dict[str, str]
    ) -> None:
        if not name:
            raise BadRequest("could not process a layer which does not have a name")
        if not path:
            raise BadRequest("could not process a layer which does not have a path")
        if not image_format:
            raise BadRequest("could not process a layer which does not have a format")
        self.logger.log(
            "debug",
            "processing layer",
            {
                "layer": name,
                "path": clean_url(path),
                "engine version": ENGINE_VERSION,
                "parent layer": parent_name,
                "format": image_format,
            },
        )
        layers = self.store.layers
        self.store.check_available()
        existing = layers.get(name)
        if existing is not None and existing.engine_version >= ENGINE_VERSION:
            # Already indexed: nothing is downloaded; the new Path/ParentName are ignored.
            self.logger.log(
                "debug",
                "layer content has already been processed in the past with older engine. skipping analysis",
                {
                    "layer": name,
                    "past engine version": existing.engine_version,
                    "current engine version": ENGINE_VERSION,
                },
            )
            return

        parent = None
        parent_features: dict[FeatureKey, str] = {}
        if parent_name:
            parent = layers.get(parent_name)
            if parent is None:
                self.logger.log(
                    "warning",
                    "the parent layer is unknown. it must be processed first",
                    {"layer": name, "parent layer": parent_name},
                )
                raise BadRequest(PARENT_UNKNOWN)
            parent_features = layers.features(parent_name)

        files = self._extract(image_format, name, path, headers)
        detected = detect.detect_namespace(files)
        namespace_name = detected.name if detected else (parent.namespace if parent else None)
        if detected:
            self.logger.log(
                "debug", "detected namespace", {"layer": name, "detected namespace": detected.name}
            )

        features = self._features(name, files, namespace_name, parent_features, parent is not None)
        self._insert(name, parent, detected, namespace_name, features, parent_features)

    def _extract(self, image_format: str, name: str, path: str, headers: dict[str, str]) -> detect.Files:
        record = DownloadRecord(layer=name, url=path)
        self.on_download(record)
        started = time.monotonic()
        try:
            try:
                stream = open_layer(path, headers, record, self.insecure_tls)
            except FetchError as err:
                record.error = str(err)
                if path.startswith(("http://", "https://")):
                    if err.status is not None:
                        self.logger.log(
                            "warning", "could not download layer: expected 2XX", {"status code": err.status}
                        )
                    else:
                        self.logger.log("warning", "could not download layer", {"error": str(err)})
                raise BadRequest(COULD_NOT_FIND_LAYER) from None
            try:
                wanted = detect.REQUIRED_FILES
                extractor = image_format.lower()
                if extractor not in EXTRACTORS:
                    # Checked only once the download has started, as in Clair.
                    raise BadRequest(f"unsupported image format '{image_format}'")
                if extractor == "aci":
                    # Clair's ACI extractor looks under rootfs/ but keeps that prefix in the
                    # file names, so no detector ever finds its files.
                    wanted = ["rootfs/" + filename for filename in wanted]
                try:
                    return tarstream.extract_files(stream, wanted)
                except tarstream.ExtractError as err:
                    raise Unprocessable(str(err)) from None
            finally:
                stream.close()
        except ApiError as err:
            record.error = record.error or str(err)
            self.logger.log(
                "error",
                "failed to extract data from path",
                {"error": str(err), "layer": name, "path": clean_url(path)},
            )
            raise
        finally:
            record.elapsed = time.monotonic() - started

    def _features(
        self,
        name: str,
        files: detect.Files,
        namespace_name: str | None,
        parent_features: dict[FeatureKey, str],
        has_parent: bool,
    ) -> list[FeatureKey]:
        def warn(event: str, fields: dict[str, Any]) -> None:
            self.logger.log("warning" if "RPM" not in event else "error", event, fields)

        packages = detect.list_packages(files, warn)
        if not packages and has_parent:
            # No package database in this layer: it inherits the parent's list unchanged.
            return list(parent_features)
        parent_namespaces = {(key.name, key.version): key.namespace for key in parent_features}
        features = []
        for package in packages:
            namespace = parent_namespaces.get((package.name, package.version)) or namespace_name
            if not namespace:
                self.logger.log(
                    "warning",
                    "Namespace unknown",
                    {"feature name": package.name, "feature version": package.version, "layer": name},
                )
                raise Unprocessable(UNSUPPORTED)
            features.append(FeatureKey(namespace, package.name, package.version))
        if features:
            self.logger.log("debug", "detected features", {"layer": name, "feature count": len(features)})
        return features

    def _insert(
        self,
        name: str,
        parent: StoredLayer | None,
        detected: detect.DetectedNamespace | None,
        namespace_name: str | None,
        features: list[FeatureKey],
        parent_features: dict[FeatureKey, str],
    ) -> None:
        """Clair's InsertLayer: store the namespace and the feature diff against the parent."""
        store = self.store
        if store.layers.get(name) is not None:
            return  # a concurrent request indexed it first; Clair ignores the duplicate
        formats = {}
        if detected:
            namespace = store.ensure_namespace(detected.name, detected.version_format)
            formats[detected.name] = detected.version_format or namespace.compare_format
        if len(name) > MAX_NAME:
            self.logger.log("error", "Handled Database Error", {"Description": "insertLayer"})
            raise BackendError()
        unique = list(dict.fromkeys(features))
        if parent is None:
            added, removed = unique, []
        else:
            current = set(unique)
            added = [key for key in unique if key not in parent_features]
            removed = [key for key in parent_features if key not in current]
        known = store.namespace_formats()
        for key in added + removed:
            if len(key.name) > MAX_NAME or len(key.version) > MAX_NAME:
                raise BackendError()
            version_format = formats.get(key.namespace) or known.get(key.namespace, "")
            if not is_valid(version_format, key.version):
                raise BadRequest("could not find/insert invalid FeatureVersion")
        store.layers.insert(
            StoredLayer(
                id=0,
                name=name,
                engine_version=ENGINE_VERSION,
                parent=parent.name if parent else None,
                namespace=namespace_name,
                added=added,
                removed=removed,
            )
        )

    # GET /v1/layers/:name

    def find_layer(self, name: str, with_features: bool, with_vulnerabilities: bool) -> dict[str, Any]:
        """The API's Layer object for GET (LayerFromDatabaseModel)."""
        self.store.check_available()
        layer = self.store.layers.get(name)
        if layer is None:
            raise NotFound()
        out: dict[str, Any] = {"Name": layer.name}
        if layer.namespace:
            out["NamespaceName"] = layer.namespace
        if layer.parent:
            out["ParentName"] = layer.parent
        out["IndexedByVersion"] = layer.engine_version
        if not (with_features or with_vulnerabilities):
            return out
        features = self.store.layers.features(name)
        namespaces = {ns.name: ns for ns in self.store.list_namespaces()}
        formats = {ns_name: ns.compare_format for ns_name, ns in namespaces.items()}
        matches = self.store.matches(features, formats) if with_vulnerabilities else {}
        listed = []
        for key, added_by in features.items():
            feature: dict[str, Any] = {"Name": key.name, "NamespaceName": key.namespace}
            version_format = namespaces[key.namespace].version_format if key.namespace in namespaces else ""
            if version_format:
                feature["VersionFormat"] = version_format
            feature["Version"] = key.version
            found = [match.vulnerability.api_json(fixed_by=match.fixed_by) for match in matches.get(key, [])]
            if found:
                feature["Vulnerabilities"] = found
            feature["AddedBy"] = added_by
            listed.append(feature)
        if listed:
            out["Features"] = listed
        return out

    # DELETE /v1/layers/:name

    def delete_layer(self, name: str) -> None:
        self.store.check_available()
        if not self.store.layers.delete(name):
            raise NotFound()
