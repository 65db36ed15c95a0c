"""Backend decisions that need no containers: where published ports and our layer server are
reached under docker-in-docker and locally."""

from __future__ import annotations

import pytest

from scanner import backend


def test_service_host_follows_docker_host(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert backend.service_host() == "127.0.0.1"
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert backend.service_host() == "127.0.0.1"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert backend.service_host() == "127.0.0.1"
    monkeypatch.setenv("DOCKER_HOST", "tcp://docker:2376")
    assert backend.service_host() == "docker"


def test_layer_address_under_docker_in_docker_routes_to_the_daemon(monkeypatch):
    # The job's address that routes to the daemon; here the daemon is on loopback.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    settings = backend.Settings()
    assert backend._layer_address(settings, "host", client=None) == ("127.0.0.1", "127.0.0.1")


def test_layer_address_overrides(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert backend._layer_address(backend.Settings(ip="127.0.0.5"), "bridge", None) == (
        "127.0.0.5",
        "127.0.0.5",
    )
    both = backend.Settings(ip="127.0.0.5", bind="127.0.0.1")
    assert backend._layer_address(both, "bridge", None) == ("127.0.0.5", "127.0.0.1")
    assert backend._layer_address(backend.Settings(), "host", None) == ("127.0.0.1", "127.0.0.1")


def test_unknown_network_is_a_usage_error():
    from scanner.errors import UsageError

    with pytest.raises(UsageError, match="unknown --network"):
        backend.choose_network(None, "overlay")
    assert backend.choose_network(None, "host") == "host"


def test_clair_readiness_is_asked_directly_whatever_the_proxy_settings(clair, monkeypatch):
    # A CI job behind a corporate proxy: the appliance's ports are only reachable directly.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert backend.clair_problem(clair.url) is None
    clair.fail_next(500, method="GET", path="/v1/namespaces")
    assert backend.clair_problem(clair.url).startswith("Clair answered 500 to GET /v1/namespaces")
    assert backend.clair_problem("http://127.0.0.1:1").startswith("cannot connect to Clair")


def test_clair_config_disables_the_updater_unless_an_interval_is_given():
    assert "  updater:\n    interval: 0\n" in backend.clair_config(5432, 6060, 6061, 0)
    assert "  updater:\n    interval: 7200s\n" in backend.clair_config(5432, 6060, 6061, 7200)
    assert "source: host=postgres port=5433 " in backend.clair_config(5433, 6060, 6061, 0)


@pytest.mark.parametrize(
    ("given", "seconds"), [("90m", 5400), ("6h", 21600), ("1d", 86400), ("1h30m", 5400), ("45s", 45)]
)
def test_update_interval_durations(given, seconds):
    from scanner.cli import _update_interval

    assert _update_interval(False, given) == seconds
    assert _update_interval(True, None) == backend.DEFAULT_UPDATE_INTERVAL
    assert _update_interval(False, None) == 0


@pytest.mark.parametrize("given", ["", "0m", "6", "h", "6 h", "1h-5m", "-1h", "2w"])
def test_a_bad_update_interval_is_a_usage_error(given):
    from conftest import run_cli

    result = run_cli(["up", "--update-interval", given])
    assert result.code == 2, result.stderr
    assert "is not a duration such as 30m, 6h, 1d or 1h30m" in result.stderr
    assert "Traceback" not in result.stderr
