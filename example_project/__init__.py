"""The example Django project: a page to read and append aether_django events."""
