"""Registry fixtures (a pytest plugin loaded from conftest.py); see registry.py.

Each fixture is a fresh registry per test, on 127.0.0.1, stopped with nothing left behind:
registry_plain (no auth), registry_basic (htpasswd), registry_token (token server),
registry_tls (TLS + basic), registry_redirect (basic auth, blob GETs redirected to a second
host on 127.0.0.2). make_registry(auth=..., tls=..., redirect=...) starts any other combination.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from registry import REGISTRY_BIN, AuthMode, Registry, start_registry


@pytest.fixture
def make_registry() -> Iterator[Callable[..., Registry]]:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip(f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
    with contextlib.ExitStack() as stack:

        def make(auth: AuthMode = "none", tls: bool = False, redirect: bool = False) -> Registry:
            return stack.enter_context(start_registry(auth=auth, tls=tls, redirect=redirect))

        yield make


@pytest.fixture
def registry_plain(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry()


@pytest.fixture
def registry_basic(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry(auth="basic")


@pytest.fixture
def registry_token(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry(auth="token")


@pytest.fixture
def registry_tls(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry(auth="basic", tls=True)


@pytest.fixture
def registry_redirect(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry(auth="basic", redirect=True)
