"""docker-compose.yml describes the production shape (these machines cannot run Docker)."""

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


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


def test_app_worker_and_beat_use_every_nats_server_with_three_replicas():
    for name in ("app", "worker", "beat", "migrate"):
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
    assert "beat" in SERVICES["beat"]["command"]
    for name in ("app", "worker", "beat"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert all(
            depends[s] == {"condition": "service_healthy"} for s in ("nats-1", "postgres", "redis")
        )
    assert SERVICES["app"]["ports"] == ["8000:8000"]


def test_the_settings_read_the_replicas(monkeypatch):
    import importlib

    monkeypatch.setenv("AETHER_REPLICAS", "3")
    import example_project.settings as settings

    assert importlib.reload(settings).AETHER["REPLICAS"] == 3
