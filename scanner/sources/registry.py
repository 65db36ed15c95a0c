"""`registry:REF`: an image in a registry (OCI Distribution / Docker Registry HTTP API v2), with no
engine involved. The scanner reads the manifest and the config blob (which gives the diff IDs, so
layers get the same chain-ID names as an engine scan of the same image); Clair downloads each layer
blob from the registry itself with an Authorization header in the layer POST, as klar does. With
`relay`, the layer server streams each blob through from the registry instead, for a Clair that
cannot reach the registry; still nothing of the image is written to disk.

Credentials, first found wins: klar's DOCKER_USER/DOCKER_PASSWORD or DOCKER_TOKEN; GitLab's
CI_REGISTRY_USER/CI_REGISTRY_PASSWORD for images on $CI_REGISTRY; the Docker config
(DOCKER_CONFIG or ~/.docker/config.json: `auths`, `credsStore`, `credHelpers`), read by the docker
SDK, which also runs the `docker-credential-*` helpers. REGISTRY_INSECURE means plain http,
DOCKER_INSECURE no TLS verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from .. import reference
from ..errors import ImageNotFound, RegistryError, ScanError, UsageError, first_line
from ..models import Image, Layer
from ..names import chain_ids
from ..redact import register_secret
from . import platforms

if TYPE_CHECKING:
    import requests

    from ..layerserver import Stream
    from . import Options, Remote, Target
    from .engine import EngineSource

log = logging.getLogger(__name__)

ACCEPT = ", ".join((*platforms.MANIFESTS, *platforms.INDEXES, *platforms.SCHEMA1))
TIMEOUT = (10.0, 60.0)  # connect, read
CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")
# A token is renewed when less than this share of its life is left, so that Clair, which
# starts its download right after our POST, never presents an expired one.
_RENEW_AT = 0.5


@dataclass(frozen=True)
class Credentials:
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    """A bearer token given as it is (klar's DOCKER_TOKEN)."""
    origin: str = ""
    """Where they came from, to say what to check when the registry rejects them."""


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def credentials(host: str, environ: Mapping[str, str]) -> Credentials | None:
    if environ.get("DOCKER_TOKEN"):
        return Credentials(token=environ["DOCKER_TOKEN"], origin="DOCKER_TOKEN")
    if environ.get("DOCKER_USER") or environ.get("DOCKER_PASSWORD"):
        return Credentials(
            environ.get("DOCKER_USER", ""),
            environ.get("DOCKER_PASSWORD", ""),
            origin="DOCKER_USER/DOCKER_PASSWORD",
        )
    ci = environ.get("CI_REGISTRY", "").strip().lower()
    if ci and ci == host.lower() and environ.get("CI_REGISTRY_USER"):
        return Credentials(
            environ["CI_REGISTRY_USER"],
            environ.get("CI_REGISTRY_PASSWORD", ""),
            origin="CI_REGISTRY_USER/CI_REGISTRY_PASSWORD",
        )
    return _docker_config(host, environ)


def _docker_config(host: str, environ: Mapping[str, str]) -> Credentials | None:
    import docker.auth
    import docker.errors

    where = environ.get("DOCKER_CONFIG") or "~/.docker"
    # Passed as a path: setting DOCKER_CONFIG in os.environ would race other images' workers.
    path = os.path.join(environ["DOCKER_CONFIG"], "config.json") if environ.get("DOCKER_CONFIG") else None
    try:
        config = docker.auth.load_config(path, credstore_env=dict(environ))
        registry = None if host in (reference.DOCKER_HUB, "registry-1.docker.io") else host
        found = docker.auth.resolve_authconfig(config, registry, credstore_env=dict(environ))
    except docker.errors.DockerException as exc:
        raise UsageError(
            f"cannot read the credentials for {host} from the Docker config in {where}: {first_line(exc)}"
        ) from None
    if not found:
        return None
    # `auths` entries come back with lower-case keys, helpers' answers with capitalised ones.
    entry = {str(k).lower(): v for k, v in found.items()}
    origin = f"the Docker config in {where}"
    if entry.get("identitytoken"):
        return Credentials(token=str(entry["identitytoken"]), origin=origin)
    if entry.get("username") or entry.get("password"):
        return Credentials(str(entry.get("username") or ""), str(entry.get("password") or ""), origin=origin)
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    from requests.utils import parse_dict_header

    scheme, _, params = header.strip().partition(" ")
    parsed: dict[str, str | None] = parse_dict_header(params)  # type: ignore[no-untyped-call]
    return scheme.lower(), {k.lower(): v or "" for k, v in parsed.items()}


class _Auth:
    """What the registry asked for, and the header that answers it: Basic from the credentials,
    or a Bearer token from the registry's token service (per repository, pull scope), renewed
    before it expires."""

    def __init__(
        self, session: requests.Session, repository: str, creds: Credentials | None, verify: Any
    ) -> None:
        self._session = session
        self._repository = repository
        self._creds = creds
        self._verify = verify
        self._scheme = "bearer" if creds is not None and creds.token else ""
        self._realm: dict[str, str] = {}
        self._token = creds.token if creds is not None else ""
        self._renew_at = float("inf")
        self._lock = threading.Lock()

    def header(self) -> str | None:
        with self._lock:
            if self._scheme == "basic" and self._creds is not None:
                import base64

                pair = f"{self._creds.username}:{self._creds.password}".encode()
                return "Basic " + base64.b64encode(pair).decode()
            if self._scheme == "bearer":
                if self._realm and time.monotonic() >= self._renew_at:
                    self._fetch_token()
                return f"Bearer {self._token}" if self._token else None
            return None

    def learn(self, header: str) -> bool:
        """Take a 401's WWW-Authenticate; False if it asks for nothing we can give."""
        scheme, params = _challenge(header)
        with self._lock:
            if scheme == "basic":
                if self._creds is None or self._creds.token:
                    return False
                self._scheme = "basic"
                return True
            # A token given as it is (DOCKER_TOKEN) was sent already: its rejection is final.
            if (
                scheme != "bearer"
                or not params.get("realm")
                or (self._creds is not None and self._creds.token)
            ):
                return False
            self._scheme = "bearer"
            self._realm = params
            self._fetch_token()
            return True

    def _fetch_token(self) -> None:
        import requests

        params = {"scope": f"repository:{self._repository}:pull"}
        if self._realm.get("service"):
            params["service"] = self._realm["service"]
        auth = None
        if self._creds is not None and not self._creds.token:
            auth = (self._creds.username, self._creds.password)
        realm = self._realm["realm"]
        try:
            answer = self._session.get(realm, params=params, auth=auth, timeout=TIMEOUT, verify=self._verify)
        except requests.RequestException as exc:
            raise RegistryError(
                f"cannot get a token from the registry's token service: {_problem(exc)}"
            ) from None
        if answer.status_code in (401, 403):
            raise _rejected(self._creds, "its token service")
        if answer.status_code != 200:
            raise RegistryError(f"the registry's token service answered {answer.status_code}")
        try:
            body = answer.json()
            token = str(body.get("token") or body.get("access_token") or "")
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(
                "the registry's token service answered something that is not a token"
            ) from None
        if not token:
            raise RegistryError("the registry's token service answered without a token")
        register_secret(token)
        self._token = token
        # Registries count expiry in whole seconds: a second less, to be safe.
        self._renew_at = time.monotonic() + lifetime * _RENEW_AT - 1


def _rejected(creds: Credentials | None, what: str) -> UsageError:
    if creds is None:
        return UsageError(
            f"the registry ({what}) requires credentials",
            hint="log in with `docker login`, or set DOCKER_USER and DOCKER_PASSWORD",
        )
    return UsageError(
        f"the registry ({what}) rejected the credentials from {creds.origin}", hint=f"check {creds.origin}"
    )


def _problem(exc: BaseException) -> str:
    """A requests error as words without URLs (they may carry tokens in their query)."""
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return "the TLS handshake failed (is its certificate trusted? SSL_CERT_FILE or /etc/docker/certs.d)"
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
        return "it did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the connection failed (is the registry running and the name right?)"
    return type(exc).__name__


def _errors(response: requests.Response) -> str:
    """The registry's error envelope `{"errors": [{"code", "message"}]}` as one line."""
    try:
        found = response.json().get("errors") or []
        text = "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in found if isinstance(e, dict)
        )
    except (ValueError, AttributeError, TypeError):
        text = ""
    return text[:300] or f"{response.status_code} {response.reason}"


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


class Client:
    """One registry host: a requests session with retries for connection failures and 5xx."""

    def __init__(self, host: str, environ: Mapping[str, str]) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.host = host
        self._environ = environ
        self.scheme = "http" if _flag(environ, "REGISTRY_INSECURE") else "https"
        # As Docker does for registries on this host, plain http is tried when TLS is not spoken.
        self._may_fall_back = self.scheme == "https" and _loopback(host)
        self.verify: Any = not _flag(environ, "DOCKER_INSECURE")
        certs = os.path.join("/etc/docker/certs.d", host, "ca.crt")
        if self.verify is True:
            if os.path.isfile(certs):
                self.verify = certs
            elif environ.get("SSL_CERT_FILE"):
                self.verify = environ["SSL_CERT_FILE"]
        self.session = requests.Session()
        self.session.trust_env = False  # proxies from the environment are not the registry's concern
        retry = Retry(
            total=3,
            connect=3,
            read=2,
            other=0,  # a TLS handshake that failed once fails again
            status=3,
            backoff_factor=0.5,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=("GET", "HEAD"),
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "clair-scan"
        self._creds: Credentials | None = None
        self._creds_read = False
        self._auths: dict[str, _Auth] = {}

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def auth(self, repository: str) -> _Auth:
        if repository not in self._auths:
            if not self._creds_read:
                self._creds = credentials(self.host, self._environ)
                self._creds_read = True
                if self._creds is not None:
                    for secret in (self._creds.password, self._creds.token):
                        if secret:
                            register_secret(secret)
            self._auths[repository] = _Auth(self.session, repository, self._creds, self.verify)
        return self._auths[repository]

    def get(
        self, repository: str, path: str, what: str, stream: bool = False, **headers: str
    ) -> requests.Response:
        """GET a path of the repository, answering the registry's auth challenge once."""
        import requests

        auth = self.auth(repository)
        for _ in range(3):  # a fall-back to http, then an auth challenge, then the answer
            sent = dict(headers)
            header = auth.header()
            if header:
                sent["Authorization"] = header
            try:
                response = self.session.get(
                    self.url(path), headers=sent, timeout=TIMEOUT, verify=self.verify, stream=stream
                )
            except requests.exceptions.SSLError as exc:
                # Only a server that does not speak TLS at all; a certificate that fails stays an error.
                if not self._may_fall_back or "CERTIFICATE" in str(exc).upper():
                    raise RegistryError(
                        f"cannot reach the registry {self.host}: {_problem(requests.exceptions.SSLError())}"
                    ) from None
                log.debug("%s does not speak TLS: trying plain http", self.host)
                self.scheme, self._may_fall_back = "http", False
                continue
            except requests.RequestException as exc:
                raise RegistryError(f"cannot reach the registry {self.host}: {_problem(exc)}") from None
            self._may_fall_back = False
            if response.status_code == 401 and header is None:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                if challenge and auth.learn(challenge):
                    continue
                raise _rejected(self._creds, self.host)
            if response.status_code in (401, 403):
                response.close()
                raise _rejected(self._creds, self.host)
            if response.status_code >= 500:
                response.close()
                raise RegistryError(
                    f"the registry {self.host} answered {response.status_code} to {what}, after retries"
                )
            return response
        raise _rejected(self._creds, self.host)


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    media_type: str


def _checked_json(body: bytes, digest: str | None, what: str) -> Any:
    if digest is not None:
        algo, _, expected = digest.partition(":")
        if algo != "sha256":
            raise RegistryError(f"{what} has a digest of an algorithm clair-scan does not check: {algo}")
        if hashlib.sha256(body).hexdigest() != expected:
            raise RegistryError(
                f"{what} does not match its digest {digest}: the registry answered other bytes"
            )
    try:
        return json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} is not JSON") from None


class RegistryImage:
    """The image behind a reference: manifest (for the platform) and config, read and checked."""

    def __init__(
        self,
        client: Client,
        ref: reference.Reference,
        name: str,
        platform: str | None,
        explicit: bool = False,
    ) -> None:
        self.client = client
        self.ref = ref
        self.name = name
        repo = ref.path
        manifest, media_type, digest = self._manifest(ref.selector, ref.digest)
        if media_type in platforms.INDEXES or "manifests" in manifest:
            explicit = False  # the index said which image is for the platform
            chosen = platforms.choose(manifest, platform, name)
            manifest, media_type, digest = self._manifest(str(chosen["digest"]), str(chosen["digest"]))
        if media_type in platforms.SCHEMA1 or manifest.get("schemaVersion") == 1:
            raise UsageError(
                f"{name} has a schema 1 manifest, which clair-scan does not read",
                hint="push it again with a current client",
            )
        try:
            config_desc = manifest["config"]
            self.layers = [
                _Blob(str(d["digest"]), int(d.get("size") or 0), str(d.get("mediaType", "")))
                for d in manifest["layers"]
            ]
            config_digest = str(config_desc["digest"])
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"the manifest of {name} is not an image manifest") from None
        for i, layer in enumerate(self.layers):
            platforms.check_layer_type(layer.media_type, name, i)
        response = client.get(repo, f"/v2/{repo}/blobs/{config_digest}", f"the config of {name}")
        if response.status_code != 200:
            raise RegistryError(f"the registry has no config blob for {name}: {_errors(response)}")
        config = _checked_json(response.content, config_digest, f"the config of {name}")
        try:
            diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        except (KeyError, TypeError):
            raise RegistryError(f"the config of {name} has no layer list (rootfs.diff_ids)") from None
        if not diff_ids or len(diff_ids) != len(self.layers):
            raise RegistryError(
                f"the config of {name} names {len(diff_ids)} layers, its manifest {len(self.layers)}"
            )
        if explicit and platform is not None and config.get("architecture"):
            wanted = platforms.parse(platform)
            have = (str(config.get("os", "")), str(config["architecture"]), config.get("variant"))
            if have[:2] != wanted[:2] or (wanted[2] is not None and have[2] != wanted[2]):
                facts = {"os": have[0], "architecture": have[1], "variant": have[2]}
                raise UsageError(f"{name} is a {platforms.describe(facts)} image, not {platform}")
        from ..archive import history_from_config

        created_by = history_from_config(config.get("history") or [], len(diff_ids))
        # Clair v4 checks what it downloads against `digest`: the blob's, compressed or not.
        layers = tuple(
            Layer(i, d, c, created_by[i], self.layers[i].digest)
            for i, (d, c) in enumerate(zip(diff_ids, chain_ids(diff_ids), strict=True))
        )
        self.image = Image(
            name=name, id=config_digest, layers=layers, digests=(f"{ref.domain}/{repo}@{digest}",)
        )

    def _manifest(self, selector: str, expected: str | None) -> tuple[dict[str, Any], str, str]:
        repo = self.ref.path
        what = f"the manifest of {self.name}"
        response = self.client.get(repo, f"/v2/{repo}/manifests/{selector}", what, Accept=ACCEPT)
        if response.status_code == 404:
            raise ImageNotFound(
                f"image not found in its registry: {self.name} ({_errors(response)})",
                hint="check the repository name and the tag",
            )
        if response.status_code != 200:
            raise RegistryError(f"the registry {self.client.host} answered {what}: {_errors(response)}")
        body = response.content
        stated = response.headers.get("Docker-Content-Digest")
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        if expected is not None or (stated and stated.startswith("sha256:")):
            _checked_json(body, expected or stated, what)
        manifest = _checked_json(body, None, what)
        if not isinstance(manifest, dict):
            raise RegistryError(f"{what} is not a JSON object")
        media_type = str(manifest.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0])
        return manifest, media_type, computed

    def blob_url(self, digest: str) -> str:
        return self.client.url(f"/v2/{self.ref.path}/blobs/{digest}")

    def chunks(self, blob: _Blob) -> Iterator[bytes]:
        """A blob's bytes as the registry sends them (redirects followed), checked against its
        digest: the last chunk is held back until the digest matches, so a wrong or cut blob
        ends the download short and Clair fails it instead of indexing it."""
        import requests

        repo = self.ref.path
        response = self.client.get(
            repo, f"/v2/{repo}/blobs/{blob.digest}", f"layer {blob.digest}", stream=True
        )
        with contextlib.closing(response):
            if response.status_code != 200:
                raise RegistryError(
                    f"the registry {self.client.host} has no blob {blob.digest}: {_errors(response)}"
                )
            hasher = hashlib.sha256()
            held = b""
            try:
                for chunk in response.raw.stream(CHUNK, decode_content=False):
                    hasher.update(chunk)
                    if held:
                        yield held
                    held = chunk
            except (requests.RequestException, OSError) as exc:
                raise RegistryError(
                    f"the download of {blob.digest} from {self.client.host} broke: {_problem(exc)}"
                ) from None
            except Exception as exc:  # urllib3's protocol errors
                raise RegistryError(
                    f"the download of {blob.digest} from {self.client.host} broke: {type(exc).__name__}"
                ) from None
            if "sha256:" + hasher.hexdigest() != blob.digest:
                raise RegistryError(f"blob {blob.digest} from {self.client.host} does not match its digest")
            if held:
                yield held


class _Layers:
    """Access to the layers for Clair: the registry's blob URL with a fresh Authorization header,
    or (relay) a stream through the layer server."""

    def __init__(self, found: RegistryImage, relay: bool) -> None:
        self._found = found
        self._relay = relay

    def wait(self, index: int, timeout: float) -> Remote | Stream:
        from ..layerserver import Stream
        from . import Remote

        blob = self._found.layers[index]
        if self._relay:
            return Stream(blob.size, lambda: self._found.chunks(blob))
        header = self._found.client.auth(self._found.ref.path).header()
        headers = (("Authorization", header),) if header else ()
        return Remote(self._found.blob_url(blob.digest), headers)

    def check(self) -> None:
        pass


class Registries:
    """The registry source for one run: a client per registry host, made on first use."""

    def __init__(
        self, options: Options, environ: Mapping[str, str] | None, engine: EngineSource | None = None
    ) -> None:
        self._options = options
        self._environ = dict(os.environ if environ is None else environ)
        self._engine = engine
        self._clients: dict[str, Client] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def target(self, text: str) -> Target:
        from . import Target

        ref = reference.parse(text)
        client = self._clients.get(ref.api_host)
        if client is None:
            client = self._clients[ref.api_host] = Client(ref.api_host, self._environ)
        platform = self._options.platform
        if platform is None and self._engine is not None:
            with contextlib.suppress(ScanError, OSError):
                platform = self._engine.platform()
        found = RegistryImage(client, ref, text, platform, explicit=self._options.platform is not None)
        layers = _Layers(found, self._options.relay)

        def access(_workdir: str) -> contextlib.AbstractContextManager[_Layers]:
            return contextlib.nullcontext(layers)

        return Target(found.image, access)
