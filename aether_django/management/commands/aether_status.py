"""``manage.py aether_status``: the cluster and the streams at a glance."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from nats.errors import Error as NatsError

from aether_django import inspection
from aether_django.conf import aether_settings
from aether_django.errors import AetherError


class Command(BaseCommand):
    help = (
        "Show NATS, the cluster (leader, active beat, nodes, shards) and every namespace's stream."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            cluster = inspection.cluster_status(beat=True, reader="aether_status")
            infos = inspection.namespace_infos(None)  # a command sees every namespace
        except (AetherError, OSError, NatsError) as exc:  # OSError covers timeouts
            raise CommandError(f"NATS at {aether_settings.NATS_URL} did not answer: {exc}") from exc
        now = time.time()
        lease, beat, shard_map = cluster.lease, cluster.beat, cluster.shard_map
        status: dict[str, Any] = {
            "nats_url": str(aether_settings.NATS_URL),
            "leader": lease.node_id if lease else None,
            "term": lease.term if lease else None,
            # The Celery beat holding the beat lease: the one that sends the schedule.
            "beat": beat.beat_id if beat else None,
            "beat_term": beat.term if beat else None,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "status": n.status,
                    "seconds_since_heartbeat": round(now - n.last_heartbeat, 1),
                    "shards": (shard_map.counts().get(n.node_id, 0) if shard_map else 0),
                }
                for n in cluster.nodes
            ],
            "num_shards": cluster.num_shards,
            "last_rebalance_moved": shard_map.moved if shard_map else None,
            "namespaces": [
                {"name": i.name, "events": i.events, "actors": i.actors, "bytes": i.bytes}
                for i in infos
            ],
        }
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        self.stdout.write(f"NATS      {status['nats_url']}")
        leader = status["leader"] or "none"
        self.stdout.write(f"Leader    {leader} (term {status['term']})")
        beat_holder = status["beat"] or "none (no Celery beat holds the beat lease)"
        self.stdout.write(f"Beat      {beat_holder} (term {status['beat_term']})")
        self.stdout.write(
            f"Shards    {status['num_shards']}, last rebalance moved "
            f"{status['last_rebalance_moved']}"
        )
        for node in status["nodes"]:
            self.stdout.write(
                f"  node {node['node_id']:<24} {node['status']:<7} "
                f"{node['shards']:>5} shards, beat {node['seconds_since_heartbeat']}s ago"
            )
        self.stdout.write(f"Namespaces ({len(status['namespaces'])})")
        for ns in status["namespaces"]:
            self.stdout.write(
                f"  {ns['name']:<32} {ns['events']:>9} events {ns['actors']:>7} actors "
                f"{ns['bytes']:>11} bytes"
            )
