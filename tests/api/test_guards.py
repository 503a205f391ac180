"""What the API refuses so that no single request can harm what others rely on: a
version step that would freeze an actor."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django.store import get_event_store

API = "/api/aether"
TOP = 2**63 - 1


def aether(**values):
    """override_settings for a few AETHER keys, the others as the test settings have them."""
    return override_settings(AETHER={**settings.AETHER, **values})


def events_url(ns, actor="acct-1"):
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def snapshot_url(ns, actor="acct-1"):
    return f"{API}/namespaces/{ns}/actors/{actor}/snapshot/"


# --- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TOP, 1_000_002])
def test_an_append_too_far_above_the_current_version_is_refused(root, ns, version):
    first = root.post(events_url(ns), {"event_type": "A", "version": 1}, format="json")
    assert first.status_code == 201
    response = root.post(events_url(ns), {"event_type": "A", "version": version}, format="json")
    assert response.status_code == 400, response.data
    assert response.json()["code"] == "invalid"
    assert "1000000" in str(response.data["version"])
    assert get_event_store(ns).get_latest_version("acct-1") == 1, "nothing stored"
    # The actor still moves on, up to the largest step.
    step = root.post(events_url(ns), {"event_type": "A", "version": 1_000_001}, format="json")
    assert step.status_code == 201, step.data


def test_a_batch_too_far_above_the_current_version_is_refused(root, ns):
    body = {"expected_version": TOP - 1000, "events": [{"event_type": "A"}]}
    response = root.post(events_url(ns), body, format="json")
    assert response.status_code == 400, response.data
    assert "expected_version" in response.data
    assert get_event_store(ns).get_latest_version("acct-1") == 0
    with aether(API_MAX_VERSION_GAP=10):
        near = {"expected_version": 9, "events": [{"event_type": "A"}]}
        assert root.post(events_url(ns), near, format="json").status_code == 201
        far = {"expected_version": 20, "events": [{"event_type": "A"}]}
        assert root.post(events_url(ns), far, format="json").status_code == 400
    assert get_event_store(ns).get_latest_version("acct-1") == 10
