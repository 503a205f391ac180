"""Settings access and the AETHER system checks."""

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from aether_django.conf import aether_settings, backend, store_config
from aether_django.store import InMemoryEventStore, get_event_store


def test_defaults_apply():
    assert aether_settings.MAX_EVENT_BYTES == 1024 * 1024
    assert store_config().timeout == 5.0


def test_override_settings_is_seen_and_undone():
    with override_settings(AETHER={"TIMEOUT": 1.5}):
        assert aether_settings.TIMEOUT == 1.5
    assert aether_settings.TIMEOUT == 5.0


def test_environment_url_wins_over_settings(monkeypatch):
    monkeypatch.setenv("AETHER_NATS_URL", "nats://127.0.0.1:1")
    with override_settings(AETHER={"NATS_URL": "nats://127.0.0.1:2"}):
        assert aether_settings.NATS_URL == "nats://127.0.0.1:1"


def test_unknown_setting_attribute():
    with pytest.raises(AttributeError, match="invalid AETHER setting"):
        aether_settings.NOPE  # noqa: B018


def test_unknown_keys_are_reported_by_a_system_check():
    with override_settings(AETHER={"TIMEOUTT": 1}):
        errors = [e for e in run_checks() if e.id == "aether_django.E001"]
    assert len(errors) == 1 and "TIMEOUTT" in errors[0].msg


def test_aether_must_be_a_dict():
    with override_settings(AETHER=["x"]):
        assert any(e.id == "aether_django.E002" for e in run_checks())


def test_backend_memory_picks_the_store_and_the_bus_together():
    from aether_django.bus import LocalEventBus, get_event_bus

    with override_settings(AETHER={"BACKEND": "memory"}):
        store = get_event_store("conf-test")
        assert isinstance(store, InMemoryEventStore)
        assert get_event_store("conf-test") is store
        assert type(get_event_bus()) is LocalEventBus
    assert not isinstance(get_event_store("conf-test"), InMemoryEventStore)


def test_backend_by_dotted_path():
    from aether_django.bus import LocalEventBus, get_event_bus

    with override_settings(AETHER={"BACKEND": "aether_django.backends.MEMORY"}):
        assert isinstance(get_event_store("conf-test-3"), InMemoryEventStore)
        assert type(get_event_bus()) is LocalEventBus
        assert backend().store_publishes


def test_deprecated_class_settings_still_work_and_warn():
    from aether_django.bus import LocalEventBus, get_event_bus

    deprecated = {
        "STORE_CLASS": "aether_django.store.InMemoryEventStore",
        "BUS_CLASS": "aether_django.bus.local.LocalEventBus",
    }
    with override_settings(AETHER=deprecated):
        with pytest.warns(DeprecationWarning) as caught:
            store = get_event_store("conf-test-4")
        said = " ".join(str(w.message) for w in caught)
        assert "STORE_CLASS" in said and "BUS_CLASS" in said
        assert isinstance(store, InMemoryEventStore)
        assert type(get_event_bus()) is LocalEventBus
        # As before BACKEND existed: the pair set by hand does not publish saves.
        assert not backend().store_publishes
        warnings = {e.id for e in run_checks() if e.id.startswith("aether_django.W00")}
        assert warnings == {"aether_django.W003"}


def test_bad_backend_says_which_setting():
    with (
        override_settings(AETHER={"BACKEND": "no.such.Backend"}),
        pytest.raises(ImportError, match="BACKEND"),
    ):
        get_event_store("conf-test-2")
    with override_settings(AETHER={"BACKEND": "no.such.Backend"}):
        assert any(e.id == "aether_django.E003" for e in run_checks())
    with override_settings(AETHER={"BACKEND": "aether_django.conf.DEFAULTS"}):
        assert any(e.id == "aether_django.E003" for e in run_checks())


def test_old_bus_name_is_the_local_bus_with_a_warning():
    import aether_django.bus
    import aether_django.bus.local
    from aether_django.bus import LocalEventBus

    for module in (aether_django.bus, aether_django.bus.local):
        with pytest.warns(DeprecationWarning, match="LocalEventBus"):
            assert module.EventBus is LocalEventBus


def test_store_config_follows_the_settings():
    settings = {
        "TIMEOUT": 2,
        "MAX_EVENT_BYTES": 2048,
        "STORAGE": "memory",
        "REPLICAS": 3,
        "MAX_AGE": 60,
        "MAX_BYTES": 10_000,
        "DUPLICATE_WINDOW": 30,
        "IMMUTABLE": False,
        "SUBJECT_PREFIX": "acme.events",
        "HEAD_CACHE_SIZE": 5,
    }
    with override_settings(AETHER=settings):
        config = store_config()
    assert (config.timeout, config.max_event_bytes, config.storage, config.replicas) == (
        2.0,
        2048,
        "memory",
        3,
    )
    assert (config.max_age, config.max_bytes, config.duplicate_window) == (60.0, 10_000, 30.0)
    assert (config.immutable, config.subject_prefix, config.head_cache_size) == (
        False,
        "acme.events",
        5,
    )


def test_cluster_config_follows_the_settings():
    from aether_django.cluster import cluster_config

    settings = {
        "CLUSTER_BUCKET": "acme_cluster",
        "HEARTBEAT_INTERVAL": 2,
        "FAILURE_TIMEOUT": "7.5",
        "NUM_SHARDS": "64",
        "REPLICAS": 3,
        "TIMEOUT": 4,
    }
    with override_settings(AETHER=settings):
        config = cluster_config()
    assert (config.bucket, config.num_shards, config.replicas) == ("acme_cluster", 64, 3)
    assert (config.heartbeat_interval, config.failure_timeout, config.timeout) == (2.0, 7.5, 4.0)
    # Each value has the field's type, whatever type the setting was written in.
    assert type(config.num_shards) is int and type(config.heartbeat_interval) is float
