"""``manage.py aether_node``: run a cluster node without Celery (development and tests)."""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from aether_django.cluster import cluster_config, node_id
from aether_django.projections.placement import node_services
from aether_django.runtime import get_runtime
from aether_django.sharding.node import ClusterNode


class Command(BaseCommand):
    help = (
        "Run a cluster node: heartbeats, leader election, shard rebalancing (as leader) "
        "serving the commands of the shards it owns and running the projections placed "
        "in it, until SIGINT or SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node-id", help="this node's id (default: AETHER NODE_ID)")
        parser.add_argument(
            "--import",
            dest="modules",
            action="append",
            default=[],
            help="import this module first (for aggregates outside installed apps)",
        )
        parser.add_argument(
            "--json", action="store_true", help="print each change of state as a JSON line"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for module in options["modules"]:
            importlib.import_module(module)
        name = options["node_id"] or node_id()
        as_json = options["json"]

        def report(change: dict[str, Any]) -> None:
            if as_json:
                sys.stdout.write(json.dumps(change) + "\n")
            else:
                sys.stdout.write(
                    f"{change['node']}: leader {change['leader']} (term {change['term']}), "
                    f"{change['shards']} shards (+{change['gained']} -{change['lost']})\n"
                )
            sys.stdout.flush()

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            # The projections this node owns run here too (unless PROJECTIONS_IN_NODES
            # is False): composed here, since the node's layer knows nothing of them.
            node = ClusterNode(
                get_runtime(),
                name,
                cluster_config(),
                on_change=report,
                services=node_services(name),
            )
            await node.run(stop)

        asyncio.run(main())
