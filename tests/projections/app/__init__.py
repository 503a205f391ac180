"""A small Django app with read models and projections, for the projection tests."""
