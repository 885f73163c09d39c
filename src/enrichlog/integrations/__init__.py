"""Bridges from enrichlog to other tools; each needs an optional extra.

- :mod:`enrichlog.integrations.prometheus` (extra ``prometheus``): a
  Prometheus collector of ``container.metrics()``, the ``/metrics`` endpoint
  the ``metrics_port`` setting starts, and an ASGI app serving the same.
"""
