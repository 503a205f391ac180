"""Benchmarks for aether_django, each measured beside a baseline doing the same work.

Run one with ``python -m bench.<name>`` from the repository root (for example
``python -m bench.store``); ``--quick`` gives a fast smoke run.
"""
