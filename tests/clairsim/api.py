"""Clair's v1 API handlers (api/v1/routes.go) and its two routers (api/router.go, httprouter v1.1.0).

A handler takes a Request and returns a Response; the HTTP plumbing, time-outs, logging and fault
injection live in server.py.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import posixpath
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import gojson, versions
from .gojson import GoJSONError, Slice, Struct
from .model import (
    ENGINE_VERSION,
    ApiError,
    BadRequest,
    FixedIn,
    NotFound,
    Vulnerability,
    parse_severity,
)
from .store import Store
from .worker import Worker

MAX_BODY = 1 << 20  # maxBodySize: request bodies are read through a 1 MiB limit
JSON_TYPE = "application/json;charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

# --- request / response -----------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str  # the request-target as sent ("/v1/layers/x?features")
    headers: dict[str, str]  # first value of each header, keys lower-cased
    body: bytes = b""
    remote: str = ""

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.target.split("?", 1)[0])

    @property
    def query(self) -> dict[str, list[str]]:
        """Go's url.ParseQuery: `&` and `;` separate pairs; a key without `=` is present."""
        raw = self.target.split("?", 1)[1] if "?" in self.target else ""
        values: dict[str, list[str]] = {}
        for pair in re.split("[&;]", raw):
            if not pair:
                continue
            key, _, value = pair.partition("=")
            try:
                key = urllib.parse.unquote_plus(key, errors="strict")
                value = urllib.parse.unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                continue
            values.setdefault(key, []).append(value)
        return values


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    route: str = ""  # Clair's prometheus route label; empty for httprouter's own answers


def json_response(request: Request, status: int, payload: Any, route: str = "") -> Response:
    """writeResponse: Clair's JSON headers, gzip when the client's Accept-Encoding mentions it."""
    body = gojson.encode_response(payload)
    headers = [("Content-Type", JSON_TYPE), ("Server", "clair")]
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=6, mtime=0)  # Go's default level
        headers.append(("Content-Encoding", "gzip"))
    return Response(status, body, headers, route)


def error_response(request: Request, status: int, message: str, route: str = "") -> Response:
    error = {"Message": message} if message else {}
    return json_response(request, status, {"Error": error}, route)


def plain_error(status: int, text: str) -> Response:
    """Go's http.Error (used for the 404 and 405 pages)."""
    return Response(
        status, (text + "\n").encode(), [("Content-Type", TEXT_TYPE), ("X-Content-Type-Options", "nosniff")]
    )


def not_found() -> Response:
    return plain_error(404, "404 page not found")


def redirect(request: Request, location: str, status: int) -> Response:
    """Go's http.Redirect, as httprouter uses it for trailing slashes and fixed paths."""
    response = Response(status, b"", [("Location", location)])
    if request.method in ("GET", "HEAD"):
        response.headers.append(("Content-Type", "text/html; charset=utf-8"))
    if request.method == "GET":
        text = "Moved Permanently" if status == 301 else "Temporary Redirect"
        response.body = f'<a href="{location}">{text}</a>.\n\n'.encode()
    return response


# --- request schemas (api/v1/models.go) --------------------------------------------------------

ERROR = Struct("v1.Error", {"Message": "string"})
FEATURE = Struct(
    "v1.Feature",
    {"Name": "string", "NamespaceName": "string", "VersionFormat": "string", "Version": "string"},
)
VULNERABILITY = Struct(
    "v1.Vulnerability",
    {
        "Name": "string",
        "NamespaceName": "string",
        "Description": "string",
        "Link": "string",
        "Severity": "string",
        "Metadata": "map[string]interface {}",
        "FixedBy": "string",
        "FixedIn": Slice(FEATURE, "[]v1.Feature"),
    },
)
FEATURE.fields["Vulnerabilities"] = Slice(VULNERABILITY, "[]v1.Vulnerability")
FEATURE.fields["AddedBy"] = "string"
LAYER = Struct(
    "v1.Layer",
    {
        "Name": "string",
        "NamespaceName": "string",
        "Path": "string",
        "Headers": "map[string]string",
        "ParentName": "string",
        "Format": "string",
        "IndexedByVersion": "int",
        "Features": Slice(FEATURE, "[]v1.Feature"),
    },
)
LAYER_ENVELOPE = Struct("v1.LayerEnvelope", {"Layer": LAYER, "Error": ERROR})
VULNERABILITY_ENVELOPE = Struct(
    "v1.VulnerabilityEnvelope",
    {
        "Vulnerability": VULNERABILITY,
        "Vulnerabilities": Slice(VULNERABILITY, "[]v1.Vulnerability"),
        "NextPage": "string",
        "Error": ERROR,
    },
)
FEATURE_ENVELOPE = Struct(
    "v1.FeatureEnvelope", {"Feature": FEATURE, "Features": Slice(FEATURE, "[]v1.Feature"), "Error": ERROR}
)


def omit_empty(value: Any) -> Any:
    """Re-encode a decoded struct as Go would: `omitempty` fields dropped, maps kept whole."""
    if isinstance(value, gojson.GoStruct):
        out = {}
        for key, item in value.items():
            item = omit_empty(item)
            if item in ("", 0, None, [], {}) and item is not False:
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [omit_empty(item) for item in value]
    return value


# --- pagination tokens ------------------------------------------------------------------------


class PageTokens:
    """Opaque, signed, one-hour page tokens.

    Clair uses Fernet (AES + HMAC) with `api.paginationkey`; the standard library has no AES, so
    these are HMAC-signed instead. Clients must treat both as opaque strings.
    """

    def __init__(self, key: str = "") -> None:
        self.key = base64.urlsafe_b64decode(key.encode()) if key else os.urandom(32)

    def make(self, value: Any) -> str:
        payload = json.dumps({"t": int(time.time()), "v": value}, separators=(",", ":")).encode()
        signature = hmac.new(self.key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(payload + signature).decode()

    def read(self, token: str) -> Any:
        try:
            raw = base64.urlsafe_b64decode(token.encode())
            payload, signature = raw[:-32], raw[-32:]
            if not hmac.compare_digest(signature, hmac.new(self.key, payload, hashlib.sha256).digest()):
                raise ValueError
            data = json.loads(payload)
            if time.time() - data["t"] > 3600:
                raise ValueError
            return data["v"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("invalid or expired pagination token") from None


def go_atoi(text: str) -> int:
    """strconv.Atoi with its error texts."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValueError(f'strconv.Atoi: parsing "{text}": value out of range')
    return number


# --- the v1 API -------------------------------------------------------------------------------

Handler = Callable[[Request, dict[str, str]], Response]


class V1Api:
    def __init__(self, store: Store, worker: Worker, pagination_key: str = "") -> None:
        self.store = store
        self.worker = worker
        self.tokens = PageTokens(pagination_key)
        self.metrics: dict[tuple[str, str], list[float]] = {}
        self.routes: list[tuple[str, str, Handler]] = [
            ("POST", "/layers", self.post_layer),
            ("GET", "/layers/:layerName", self.get_layer),
            ("DELETE", "/layers/:layerName", self.delete_layer),
            ("GET", "/namespaces", self.get_namespaces),
            ("GET", "/namespaces/:namespaceName/vulnerabilities", self.get_vulnerabilities),
            ("POST", "/namespaces/:namespaceName/vulnerabilities", self.post_vulnerability),
            ("GET", "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName", self.get_vulnerability),
            ("PUT", "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName", self.put_vulnerability),
            (
                "DELETE",
                "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName",
                self.delete_vulnerability,
            ),
            ("GET", "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName/fixes", self.get_fixes),
            (
                "PUT",
                "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName/fixes/:fixName",
                self.put_fix,
            ),
            (
                "DELETE",
                "/namespaces/:namespaceName/vulnerabilities/:vulnerabilityName/fixes/:fixName",
                self.delete_fix,
            ),
            ("GET", "/notifications/:notificationName", self.get_notification),
            ("DELETE", "/notifications/:notificationName", self.delete_notification),
            ("GET", "/metrics", self.get_metrics),
        ]

    # layers

    def post_layer(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/postLayer"
        try:
            envelope = gojson.decode(request.body[:MAX_BODY], LAYER_ENVELOPE)
        except GoJSONError as err:
            return error_response(request, 400, str(err), route)
        layer = envelope.get("Layer")
        if layer is None:
            return error_response(request, 400, "failed to provide layer", route)
        name, path = layer.get("Name") or "", layer.get("Path") or ""
        parent, image_format = layer.get("ParentName") or "", layer.get("Format") or ""
        headers = layer.get("Headers") or {}
        try:
            self.worker.process_layer(image_format, name, parent, path, headers)
        except ApiError as err:
            return error_response(request, err.status, str(err), route)
        echo: dict[str, Any] = {
            "Name": name,
            "Path": path,
            "Headers": {k: headers[k] for k in sorted(headers)},
        }
        echo.update({"ParentName": parent, "Format": image_format, "IndexedByVersion": ENGINE_VERSION})
        return json_response(request, 201, {"Layer": {k: v for k, v in echo.items() if v}}, route)

    def get_layer(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getLayer"
        query = request.query
        try:
            layer = self.worker.find_layer(
                params["layerName"], "features" in query, "vulnerabilities" in query
            )
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        return json_response(request, 200, {"Layer": layer}, route)

    def delete_layer(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/deleteLayer"
        try:
            self.worker.delete_layer(params["layerName"])
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        return Response(200, b"", [], route)  # only WriteHeader(200): no Server header, no body

    # namespaces and vulnerabilities

    def get_namespaces(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getNamespaces"
        try:
            namespaces = self.store.list_namespaces()
        except ApiError as err:
            return error_response(request, 500, str(err), route)
        listed = [
            {k: v for k, v in (("Name", ns.name), ("VersionFormat", ns.version_format)) if v}
            for ns in namespaces
        ]
        return json_response(request, 200, {"Namespaces": listed or None}, route)

    def _limit(self, request: Request, route: str, check_negative: bool) -> int | Response:
        values = request.query.get("limit")
        if values is None:
            return error_response(request, 400, "must provide limit query parameter", route)
        try:
            limit = go_atoi(values[0])
        except ValueError as err:
            return error_response(request, 400, f"invalid limit format: {err}", route)
        if check_negative and limit < 0:
            return error_response(request, 400, "limit value should not be less than zero", route)
        return limit

    def get_vulnerabilities(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getVulnerabilities"
        limit = self._limit(request, route, check_negative=True)
        if isinstance(limit, Response):
            return limit
        start = 0
        if "page" in request.query:
            try:
                start = int(self.tokens.read(request.query["page"][0]))
            except (ValueError, TypeError) as err:
                return error_response(request, 400, f"invalid page format: {err}", "v1/getNotification")
        try:
            found, next_id = self.store.list_vulnerabilities(params["namespaceName"], limit, start)
        except ApiError as err:
            status = 404 if isinstance(err, NotFound) else 500
            return error_response(request, status, str(err), route)
        payload: dict[str, Any] = {"Vulnerabilities": [v.api_json() for v in found] or None}
        if next_id != -1:
            payload["NextPage"] = self.tokens.make(next_id)
        return json_response(request, 200, payload, route)

    def _vulnerability_model(self, data: dict[str, Any]) -> tuple[Vulnerability, list[str]]:
        """v1.Vulnerability.DatabaseModel: severity and fixed versions are validated here."""
        severity = parse_severity(data.get("Severity") or "")
        fixes, fix_namespaces = [], []
        for feature in data.get("FixedIn") or []:
            feature = feature or {}
            fixes.append(self._fix_model(feature))
            fix_namespaces.append(feature.get("NamespaceName") or "")
        metadata = data.get("Metadata")
        vulnerability = Vulnerability(
            name=data.get("Name") or "",
            namespace=data.get("NamespaceName") or "",
            severity=severity,
            description=data.get("Description") or "",
            link=data.get("Link") or "",
            metadata=metadata,
            fixed_in=fixes,
        )
        return vulnerability, fix_namespaces

    @staticmethod
    def _fix_model(feature: dict[str, Any]) -> FixedIn:
        version = feature.get("Version") or ""
        if version == "None":
            return FixedIn(feature.get("Name") or "", versions.MAX_VERSION)
        try:
            versions.valid(feature.get("VersionFormat") or "", version)
        except versions.UnknownFormatError:
            raise BadRequest("unknown version format") from None
        except versions.VersionError:
            raise BadRequest("invalid version") from None
        return FixedIn(feature.get("Name") or "", version)

    def _insert(
        self, request: Request, route: str, data: dict[str, Any], url: dict[str, str] | None
    ) -> Response | None:
        try:
            vulnerability, fix_namespaces = self._vulnerability_model(data)
            if url is not None:
                vulnerability.namespace, vulnerability.name = url["namespaceName"], url["vulnerabilityName"]
            self.store.insert_vulnerability(vulnerability, fixed_in_namespaces=fix_namespaces)
        except ApiError as err:
            return error_response(request, 400 if isinstance(err, BadRequest) else 500, str(err), route)
        return None

    def post_vulnerability(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/postVulnerability"
        try:
            envelope = gojson.decode(request.body[:MAX_BODY], VULNERABILITY_ENVELOPE)
        except GoJSONError as err:
            return error_response(request, 400, str(err), route)
        data = envelope.get("Vulnerability")
        if data is None:
            return error_response(request, 400, "failed to provide vulnerability", route)
        failed = self._insert(request, route, data, None)
        return failed or json_response(request, 201, {"Vulnerability": omit_empty(data)}, route)

    def get_vulnerability(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getVulnerability"
        try:
            vulnerability = self.store.find_vulnerability(
                params["namespaceName"], params["vulnerabilityName"]
            )
            version_format = self._namespace_format(vulnerability.namespace)
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        payload = vulnerability.api_json(
            with_fixed_in="fixedIn" in request.query, version_format=version_format
        )
        return json_response(request, 200, {"Vulnerability": payload}, route)

    def _namespace_format(self, name: str) -> str:
        return next((ns.version_format for ns in self.store.list_namespaces() if ns.name == name), "")

    def put_vulnerability(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/putVulnerability"
        try:
            envelope = gojson.decode(request.body[:MAX_BODY], VULNERABILITY_ENVELOPE)
        except GoJSONError as err:
            return error_response(request, 400, str(err), route)
        data = envelope.get("Vulnerability")
        if data is None:
            return error_response(request, 400, "failed to provide vulnerability", route)
        if data.get("FixedIn"):
            return error_response(request, 400, "Vulnerability.FixedIn must be empty", route)
        failed = self._insert(request, route, data, params)
        return failed or json_response(request, 200, {"Vulnerability": omit_empty(data)}, route)

    def delete_vulnerability(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/deleteVulnerability"
        try:
            self.store.delete_vulnerability(params["namespaceName"], params["vulnerabilityName"])
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        return Response(200, b"", [], route)

    def get_fixes(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getFixes"
        try:
            vulnerability = self.store.find_vulnerability(
                params["namespaceName"], params["vulnerabilityName"]
            )
            version_format = self._namespace_format(vulnerability.namespace)
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        fixes = vulnerability.api_json(with_fixed_in=True, version_format=version_format).get("FixedIn")
        return json_response(request, 200, {"Features": fixes}, route)

    def put_fix(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/putFix"
        try:
            envelope = gojson.decode(request.body[:MAX_BODY], FEATURE_ENVELOPE)
        except GoJSONError as err:
            return error_response(request, 400, str(err), route)
        feature = envelope.get("Feature")
        if feature is None:
            return error_response(request, 400, "failed to provide feature", route)
        if (feature.get("Name") or "") != params["fixName"]:
            return error_response(request, 400, "feature name in URL and JSON do not match", route)
        try:
            fix = self._fix_model(feature)
            # Clair reads the namespace from a route parameter that does not exist
            # ("vulnerabilityNamespace"), so it always passes an empty namespace.
            self.store.insert_vulnerability(
                Vulnerability(name=params["vulnerabilityName"], namespace="", fixed_in=[fix]),
                only_fixed_in=True,
            )
        except ApiError as err:
            status = 400 if isinstance(err, BadRequest) else 404 if isinstance(err, NotFound) else 500
            return error_response(request, status, str(err), route)
        return json_response(request, 200, {"Feature": omit_empty(feature)}, route)

    def delete_fix(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/deleteFix"
        try:
            # Same empty-namespace bug as putFix; here every error but "not found" is a 500.
            fix = FixedIn(params["fixName"], versions.MIN_VERSION)
            self.store.insert_vulnerability(
                Vulnerability(name=params["vulnerabilityName"], namespace="", fixed_in=[fix]),
                only_fixed_in=True,
            )
        except ApiError as err:
            return error_response(request, 404 if isinstance(err, NotFound) else 500, str(err), route)
        return Response(200, b"", [], route)

    # notifications and metrics

    def get_notification(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/getNotification"
        limit = self._limit(request, route, check_negative=False)
        if isinstance(limit, Response):
            return limit
        if "page" in request.query:
            try:
                self.tokens.read(request.query["page"][0])
            except ValueError as err:
                return error_response(request, 400, f"invalid page format: {err}", route)
        try:
            self.store.check_available()
        except ApiError as err:
            return error_response(request, 500, str(err), route)
        # The simulator never creates notifications.
        return error_response(request, 404, str(NotFound()), "v1/deleteNotification")

    def delete_notification(self, request: Request, params: dict[str, str]) -> Response:
        route = "v1/deleteNotification"
        try:
            self.store.check_available()
        except ApiError as err:
            return error_response(request, 500, str(err), route)
        return error_response(request, 404, str(NotFound()), route)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.metrics.setdefault((route, str(status) if status else "???"), []).append(seconds * 1000)

    def get_metrics(self, request: Request, params: dict[str, str]) -> Response:
        name = "clair_api_response_duration_milliseconds"
        lines = [
            f"# HELP {name} The duration of time it takes to receieve and write a response to an API request",
            f"# TYPE {name} summary",
        ]
        for (route, code), samples in sorted(self.metrics.items()):
            labels = f'code="{code}",route="{route}"'
            lines.append(f"{name}_sum{{{labels}}} {gojson.format_float(sum(samples))}")
            lines.append(f"{name}_count{{{labels}}} {len(samples)}")
        body = ("\n".join(lines) + "\n").encode()
        return Response(200, body, [("Content-Type", "text/plain; version=0.0.4")], "")


# --- routing (httprouter v1.1.0 semantics) ----------------------------------------------------


def _match(pattern: str, path: str, fold_case: bool = False) -> dict[str, str] | None:
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    if len(pattern_parts) != len(path_parts):
        return None
    params = {}
    for expected, actual in zip(pattern_parts, path_parts):
        if expected.startswith(":"):
            if not actual:
                return None  # a parameter never matches an empty segment
            params[expected[1:]] = actual
        elif expected != actual and not (fold_case and expected.lower() == actual.lower()):
            return None
    return params


def _fixed_path(pattern: str, path: str) -> str:
    """The route's spelling of a case-insensitively matched path (parameters as given)."""
    return "/".join(
        actual if expected.startswith(":") else expected
        for expected, actual in zip(pattern.split("/"), path.split("/"))
    )


def _clean_path(path: str) -> str:
    cleaned = posixpath.normpath("/" + path)
    cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class Router:
    """httprouter: exact match, then trailing-slash and fixed-path redirects, then 405, then 404."""

    def __init__(self, routes: list[tuple[str, str, Handler]]) -> None:
        self.routes = routes

    def lookup(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        for route_method, pattern, handler in self.routes:
            if route_method == method:
                params = _match(pattern, path)
                if params is not None:
                    return handler, params
        return None

    def resolve(self, request: Request, path: str) -> tuple[Handler, dict[str, str]] | Response:
        found = self.lookup(request.method, path)
        if found:
            return found
        query = "?" + request.target.split("?", 1)[1] if "?" in request.target else ""
        if (
            request.method != "CONNECT"
            and path != "/"
            and any(m == request.method for m, _, _ in self.routes)
        ):
            code = 301 if request.method == "GET" else 307
            toggled = path[:-1] if path.endswith("/") else path + "/"
            if len(path) > 1 and self.lookup(request.method, toggled):
                return redirect(request, urllib.parse.quote(toggled) + query, code)
            cleaned = _clean_path(path)
            for candidate in (cleaned, cleaned[:-1] if cleaned.endswith("/") else cleaned + "/"):
                for route_method, pattern, _ in self.routes:
                    if (
                        route_method == request.method
                        and _match(pattern, candidate, fold_case=True) is not None
                    ):
                        return redirect(
                            request, urllib.parse.quote(_fixed_path(pattern, candidate)) + query, code
                        )
        for route_method, pattern, _ in self.routes:
            if route_method != request.method and _match(pattern, path) is not None:
                return plain_error(405, "Method Not Allowed")
        return not_found()
