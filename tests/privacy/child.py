"""A second process for the cache-bound test: loads an order (warming its key cache),
says so, then on "go" keeps loading it and reports when it reads the marker.

Run as ``python -m tests.privacy.child ACTOR_ID CACHE_SECONDS`` with the test's
AETHER_NATS_URL; prints JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    actor_id, cache_seconds = sys.argv[1], float(sys.argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import override_settings

    with override_settings(AETHER={**settings.AETHER, "PRIVACY_KEY_CACHE_SECONDS": cache_seconds}):
        run(actor_id)


def run(actor_id: str) -> None:
    from aether_django.privacy import FORGOTTEN

    from .domain import Order

    print(json.dumps({"warm": Order.objects.get(actor_id).email}), flush=True)
    sys.stdin.readline()  # "go": the parent has forgotten the subject
    start = time.monotonic()
    reads = []
    while time.monotonic() - start < 30:
        email = Order.objects.get(actor_id).email
        reads.append(email)
        if email == FORGOTTEN:
            break
        time.sleep(0.05)
    print(
        json.dumps({"elapsed": time.monotonic() - start, "last": reads[-1], "first": reads[0]}),
        flush=True,
    )


if __name__ == "__main__":
    main()
