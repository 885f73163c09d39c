"""Enrichers that ship with enrichlog, each also reachable by its URI scheme."""

from __future__ import annotations

from .builtin import EnvEnricher, HostnameEnricher, ProcessEnricher, StaticEnricher

__all__ = ["EnvEnricher", "HostnameEnricher", "ProcessEnricher", "StaticEnricher"]
