"""The JetStream wire protocol: the only code in aether_django that speaks JetStream's API.

Everything else (the store, the bus, the cluster coordinator, the health views) goes
through these modules instead of writing ``$JS.API`` subjects, header names, error
codes or ack parsing of its own:

* :mod:`.api` — API subjects, error codes, ``JetStreamRefused``, reply and ack parsing;
* :mod:`.headers` — the header names aether writes and reads, status codes;
* :mod:`.direct` — single, batched and multi-subject direct gets;
* :mod:`.streams` — STREAM.INFO requests and the paged stream listing;
* :mod:`.request` — request/reply for saves, leaner than ``nc.request``;
* :mod:`.client` — the nats-py client the runtime connects with (a faster header
  parser, kept behind a version guard) and the handlers of dropped messages.

Primitives: no Django, no settings; every call takes the connection and timeout
from its caller. Naming policy (which stream holds which namespace) lives in
``aether_django.names``, not here.
"""

from __future__ import annotations
