"""Resilience building blocks: cache, circuit breaker, retry, and the guard
that puts one async enricher behind all of them."""
