"""docker-compose.yml describes the production shape (these machines cannot run Docker)."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from aether_django.testing import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


@pytest.fixture
def example_project_urls(settings):
    """Resolve URLs with the example project's URLconf (the test settings install its
    shop app already)."""
    settings.ROOT_URLCONF = "example_project.urls"


def env(service):
    return SERVICES[service].get("environment", {})


def test_the_services_are_all_there():
    assert set(SERVICES) >= {
        "nats-1",
        "nats-2",
        "nats-3",
        "postgres",
        "redis",
        "app",
        "worker",
        "beat",
        "beat-2",
        "migrate",
    }


def test_three_nats_servers_form_one_jetstream_cluster():
    routes = set()
    for name in ("nats-1", "nats-2", "nats-3"):
        command = SERVICES[name]["command"]
        assert "--jetstream" in command and "--cluster_name aether" in command
        assert f"--server_name {name}" in command
        routes.add(command.split("--routes ")[1].split()[0])
        assert any(v.startswith(f"{name}:") for v in SERVICES[name]["volumes"])
    assert routes == {"nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"}
    image = SERVICES["nats-1"]["image"]
    major, minor = (int(p) for p in image.split(":")[1].split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 12)


def test_the_nats_servers_sync_every_write_before_acknowledging_it(tmp_path):
    # The three servers share one Docker host: a power loss hits all of them at once.
    config = COMPOSE["configs"]["nats-server"]["content"]
    assert re.search(r"jetstream\s*\{[^}]*\bsync_interval:\s*always\b", config)
    for name in ("nats-1", "nats-2", "nats-3"):
        assert SERVICES[name]["configs"] == [
            {"source": "nats-server", "target": "/etc/nats/nats-server.conf"},
            {"source": "nats-auth", "target": "/etc/nats/auth.conf"},
        ]
        assert SERVICES[name]["command"].startswith("--config /etc/nats/nats-server.conf ")
        assert SERVICES[name]["command"].count("--config") == 1  # the server reads one file
    # nats-server accepts the files as laid out in the containers (checked with the test
    # suite's binary; the users' passwords come from the environment as in compose).
    (tmp_path / "nats-server.conf").write_text(config)
    (tmp_path / "auth.conf").write_text(
        COMPOSE["configs"]["nats-auth"]["content"].replace("$$", "$")
    )
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats-server.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "NATS_APP_PASSWORD": "x1",
            "NATS_WORKER_PASSWORD": "x2",
            "NATS_BEAT_PASSWORD": "x3",
        },
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The example project says so, for the system check aether_django.W301.
    assert '"NATS_SYNC_ALWAYS": True' in (ROOT / "example_project" / "settings.py").read_text()


def test_app_worker_and_beat_use_every_nats_server_with_three_replicas():
    for name in ("app", "worker", "beat", "beat-2", "migrate"):
        assert env(name)["AETHER_NATS_URL"] == (
            "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
        )
        assert env(name)["AETHER_REPLICAS"] == "3"
        assert env(name)["POSTGRES_HOST"] == "postgres"
        assert env(name)["CELERY_BROKER_URL"].startswith("redis://redis:")


def test_the_processes_and_their_order():
    assert SERVICES["app"]["command"][0] == "uvicorn"
    assert "example_project.asgi:application" in SERVICES["app"]["command"]
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "example_project.celery", "worker"]
    for name in ("beat", "beat-2"):
        assert SERVICES[name]["command"][:4] == ["celery", "-A", "example_project.celery", "beat"]
    for name in ("app", "worker", "beat", "beat-2"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert all(
            depends[s] == {"condition": "service_healthy"} for s in ("nats-1", "postgres", "redis")
        )


def test_only_the_proxy_is_published_so_the_app_scales_without_a_port_clash():
    # `docker compose up --scale app=N` fails when app publishes a fixed host port.
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"proxy"}
    assert SERVICES["proxy"]["ports"] == ["8000:8000"]
    assert SERVICES["app"]["expose"] == ["8000"]
    assert "deploy" not in SERVICES["app"]  # no fixed replica count pinned in the file


def test_the_proxy_spreads_requests_over_every_healthy_app_replica():
    proxy = SERVICES["proxy"]
    assert proxy["image"].startswith("caddy:2")
    assert proxy["depends_on"] == {"app": {"condition": "service_healthy"}}
    [mount] = proxy["configs"]
    assert mount == {"source": "caddyfile", "target": "/etc/caddy/Caddyfile"}
    caddyfile = COMPOSE["configs"]["caddyfile"]["content"].split()
    # Listens on the published port; upstreams are the A records of `app`, one per
    # replica, looked up again every few seconds so a scale change is followed.
    assert caddyfile[:3] == [":8000", "{", "reverse_proxy"]
    assert caddyfile[caddyfile.index("dynamic") :][:4] == ["dynamic", "a", "app", "8000"]
    assert caddyfile[caddyfile.index("refresh") + 1] == "5s"


def test_the_app_has_a_readiness_healthcheck(example_project_urls):
    from django.urls import resolve

    check = SERVICES["app"]["healthcheck"]
    command = check["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    [url] = re.findall(r"'(http://[^']+)'", command[3])
    assert url == "http://127.0.0.1:8000/aether/readyz/"
    # 127.0.0.1 must be an allowed host, or Django answers the check with 400.
    assert "127.0.0.1" in env("app")["DJANGO_ALLOWED_HOSTS"].split(",")
    # The example project mounts aether_django's readiness view there.
    assert resolve("/aether/readyz/").view_name == "aether:readyz"
    # A 503 from readyz makes urlopen raise, so the check fails until NATS answers.
    assert "urlopen(" in command[3]


def test_the_settings_read_the_replicas(monkeypatch):
    import importlib

    monkeypatch.setenv("AETHER_REPLICAS", "3")
    import example_project.settings as settings

    assert importlib.reload(settings).AETHER["REPLICAS"] == 3


def test_two_beats_run_with_the_leased_scheduler():
    # Several beats may run (one per host): only the holder of the beat lease sends.
    beats = [name for name, service in SERVICES.items() if "beat" in service.get("command", [])]
    assert sorted(beats) == ["beat", "beat-2"]
    assert SERVICES["beat"]["command"] == SERVICES["beat-2"]["command"]
    # setup_cluster makes LeasedScheduler the beat scheduler; no --scheduler overrides it.
    assert "setup_cluster(app)" in (ROOT / "example_project" / "celery.py").read_text()
    assert not any(a in ("-S", "--scheduler") for a in SERVICES["beat"]["command"])
