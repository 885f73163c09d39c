"""Configuration by the environment: enricher URIs in ``ENRICHLOG_ENRICHERS``.

The application only calls ``configure_logging()``; which enrichers run, and
how, is decided by the deployment. This script sets a few variables itself
(only those not already set) so that it runs as-is::

    python examples/env_config.py

    ENRICHLOG_FORMAT=logfmt ENRICHLOG_ENRICHERS='hostname://,process://' \\
        python examples/env_config.py

It also defines an enricher class of its own with ``scheme = "tenant"``, so
that ``tenant://`` URIs build it; its ``Params`` model validates the URI.
Installed packages can publish such classes through the
``enrichlog.enrichers`` entry-point group instead (see docs/enrichers.md).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherFactory, configure_logging, get_logger


class TenantEnricher(AsyncEnricher):
    """Adds ``tenant`` from a (simulated) tenant service.

    ``tenant://svc:secret@tenants.internal:8080/v1?region=eu&ttl=60``
    """

    scheme = "tenant"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        host: str  # URI parts: host, port, user, password, path
        port: int = 80
        user: str | None = None
        password: SecretStr | None = None  # never shown: '***' in URIs and errors
        path: str = "/"
        region: str = "eu"  # a query key: ?region=us

    def __init__(self, *, params: Params, **options: Any) -> None:
        super().__init__(**options)
        self.params = params

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.02)  # a request to http://{host}:{port}{path}
        event_dict["tenant"] = f"{self.params.region}-{event_dict.get('user_id', 0) % 3}"
        return event_dict


DEFAULTS = {
    # A JSON list works too: '["static://?service=checkout", "hostname://"]'.
    # In a comma-separated list, a comma starts a new URI only before a
    # 'scheme://', so env://?fields=GIT_SHA,REGION stays one URI.
    "ENRICHLOG_ENRICHERS": (
        "static://?service=checkout&environment=dev,"
        "hostname://,"
        "env://?fields=GIT_SHA,REGION,"
        "tenant://svc:s3cret@tenants.internal:8080/v1?region=eu&ttl=60&name=tenant"
    ),
    "ENRICHLOG_DELIVERY": "inline",
    # Per-enricher override, by enricher name: beats the URI's own value.
    "ENRICHLOG_ENRICHER_OPTIONS__TENANT__TIMEOUT": "0.5",
    "GIT_SHA": "3f2c1d9",
    "REGION": "eu-west-1",
}


def main() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)

    container = configure_logging()  # everything comes from the environment

    for enricher in container.registry:
        spec = EnricherFactory.spec_of(enricher)
        if spec is not None:
            print(f"# {enricher.name:<10} from {spec.uri}")  # secrets masked

    log = get_logger()
    log.info("checkout", user_id=42, amount=9.99)
    log.warning("payment retried", user_id=7)
    container.shutdown()


if __name__ == "__main__":
    main()
