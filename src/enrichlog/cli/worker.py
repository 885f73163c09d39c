"""``python -m enrichlog worker``: enrich and write the events producers
publish to the transport (``ENRICHLOG_TRANSPORT``), configured from the
environment like an application."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Iterable, Sequence

from ..exceptions import EnricherConfigError, EnrichlogError
from ..settings import resolve_settings
from ..uri.masking import mask_secrets

__all__ = ["load_enrichers", "run_worker"]


def load_enrichers(reference: str) -> list[object]:
    """The enrichers ``module:attribute`` names: an iterable of enrichers,
    or a callable returning one.

    Raises:
        EnricherConfigError: the module or attribute cannot be loaded.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise EnricherConfigError(f"--enrichers {reference!r}: expected module:attribute")
    try:
        value: object = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # the module's own code may raise anything
        raise EnricherConfigError(
            f"--enrichers {reference!r} cannot be loaded: {mask_secrets(str(exc))}"
        ) from None
    if callable(value):
        try:
            value = value()
        except Exception as exc:
            raise EnricherConfigError(
                f"--enrichers {reference!r} failed: {type(exc).__name__}: {mask_secrets(str(exc))}"
            ) from None
    if not isinstance(value, Iterable):
        raise EnricherConfigError(f"--enrichers {reference!r}: expected a list of enrichers")
    return list(value)


def run_worker(
    imports: Sequence[str] = (), enrichers: str | None = None, stats_interval: float = 30.0
) -> int:
    """Run a worker until SIGTERM or SIGINT; 0 after a clean stop, 1 on a
    configuration problem (printed on stderr)."""
    from ..worker import Worker  # noqa: PLC0415 - imports the engine and nats-py

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        for module in imports:
            try:
                importlib.import_module(module)
            except Exception as exc:  # the module's own code may raise anything
                raise EnricherConfigError(
                    f"--import {module!r}: {mask_secrets(str(exc))}"
                ) from None
        in_code = load_enrichers(enrichers) if enrichers else []
        worker = Worker(resolve_settings(None, {}), in_code, stats_interval=stats_interval)
    except EnrichlogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        await worker.run()

    try:
        asyncio.run(main())
    except EnrichlogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
