"""The DRF API: namespaces, actors, events, snapshots, state and the cluster.

Mount it with ``path("api/aether/", include("aether_django.api.urls"))``.
"""
