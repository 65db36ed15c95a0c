"""The Clair v2 client: which layers Clair holds, submitting the missing ones, reading the findings.

Retries follow Clair's documented semantics: 5xx and dropped connections are retried unchanged
with backoff, 4xx never are. Every call is bounded by the deadline of the whole analysis.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from .errors import ClairError
from .names import normalize_url, redact

log = logging.getLogger(__name__)

_RETRY_STATUS = {500, 502, 503, 504}


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


class ClairClient:
    def __init__(self, url: str, retries: int = 4, backoff: float = 0.5) -> None:
        self.url = normalize_url(url)
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "clair-scan"
        # Clair runs next to us or on a known host: proxies from the environment would misroute it.
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def layer(self, name: str, deadline: Deadline, vulnerabilities: bool = True) -> dict[str, Any] | None:
        """The layer with its (cumulative) features and their vulnerabilities, or None if unknown."""
        query = "?features&vulnerabilities" if vulnerabilities else ""
        response = self._call("GET", f"/v1/layers/{name}{query}", deadline, ok=(200, 404))
        if response.status_code == 404:
            return None
        layer = _json(response).get("Layer")
        if not isinstance(layer, dict):
            raise ClairError(f"Clair at {redact(self.url)} answered GET /v1/layers without a layer")
        return layer

    def submit(self, name: str, path: str, parent: str, deadline: Deadline) -> None:
        body = {"Layer": {"Name": name, "Path": path, "ParentName": parent, "Format": "Docker"}}
        try:
            self._call("POST", "/v1/layers", deadline, ok=(201,), json=body)
        except ClairError as exc:
            if "could not find layer" not in exc.message:
                raise
            where = urlsplit(path).netloc
            raise ClairError(
                exc.message, hint=f"Clair could not download from {where}; pass an --ip that Clair can reach"
            ) from None

    def namespaces(self, deadline: Deadline) -> list[str]:
        response = self._call("GET", "/v1/namespaces", deadline, ok=(200,))
        return [str(n.get("Name")) for n in _json(response).get("Namespaces") or []]

    def _call(
        self, method: str, path: str, deadline: Deadline, ok: tuple[int, ...], **kwargs: Any
    ) -> requests.Response:
        where = f"{method} {path.split('?')[0]}"
        delay = self.backoff
        for attempt in range(self.retries + 1):
            left = deadline.remaining()
            if left <= 0:
                raise self._timeout(deadline)
            try:
                response = self.session.request(method, self.url + path, timeout=left, **kwargs)
            except requests.Timeout:
                raise self._timeout(deadline) from None
            except requests.RequestException as exc:
                problem = f"cannot connect to Clair at {redact(self.url)}"
                log.debug("%s (%s): %s", problem, where, exc)
                error = ClairError(problem, hint="is Clair running, and is --clair / CLAIR_ADDR right?")
            else:
                if response.status_code in ok:
                    return response
                error = ClairError(f"Clair answered {response.status_code} to {where}: {_message(response)}")
                if response.status_code not in _RETRY_STATUS:
                    raise error
            if attempt < self.retries and deadline.remaining() > delay:
                log.debug("retrying %s in %.1fs after: %s", where, delay, error)
                time.sleep(delay)
                delay *= 2
            else:
                break
        raise error

    def _timeout(self, deadline: Deadline) -> ClairError:
        return ClairError(
            f"Clair at {redact(self.url)} did not finish within {deadline.seconds:g} s",
            hint="raise --clair-timeout for very large images",
        )


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise ClairError(f"Clair answered {response.status_code} with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise ClairError(f"Clair answered {response.status_code} with unexpected JSON")
    return data


def _message(response: requests.Response) -> str:
    """Clair's error envelope `{"Error": {"Message": ...}}`, or the first line of a plain body."""
    try:
        data = response.json()
        message = data["Error"]["Message"]
        if isinstance(message, str) and message:
            return message
    except (ValueError, KeyError, TypeError):
        pass
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason or "no details"
