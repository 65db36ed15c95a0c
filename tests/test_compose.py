"""compose/: the files people run the backend with must fit together and fit clair-scan."""

from __future__ import annotations

from pathlib import Path

import yaml

from scanner.names import normalize_url

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def test_compose_config_points_clair_at_the_database_service():
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    config_mount = next(v for v in services["clair"]["volumes"] if v.endswith(":/config/config.yaml:ro"))
    config = yaml.safe_load((COMPOSE / config_mount.split(":")[0]).read_text())["clair"]
    source = dict(part.split("=", 1) for part in config["database"]["options"]["source"].split())
    assert source["host"] in services  # the database is reached by its service name
    assert (source["user"], source["password"], source["port"]) == ("postgres", "password", "5432")
    ports = {p.split(":")[-1] for p in services["clair"]["ports"]}
    assert ports == {str(config["api"]["port"]), str(config["api"]["healthport"])}
    published = next(p for p in services["clair"]["ports"] if p.endswith(f":{config['api']['port']}"))
    # What the README tells people to pass as --clair must be where the API is published.
    assert normalize_url(published.rsplit(":", 1)[0]) == "http://127.0.0.1:6060"
