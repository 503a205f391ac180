"""aether_django: event-sourced, clustered Django apps on NATS JetStream."""

__version__ = "0.1.0.dev0"
