"""Case 12: an application whose enricher URIs carry secrets.

Every secret in this script is the string ``s3cret``. Enrichers come from
``ENRICHLOG_ENRICHERS`` (set by the test) and from a URI with a plugin-like
scheme defined here, whose start-up fails with a message naming its DSN and
whose calls fail with a message naming a token. The script prints what an
operator would look at: reprs, the canonical URI, configuration errors,
health, metrics and the shutdown report. The test checks that no secret is
in the script's stdout or stderr.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _harness import arg, plain, summary
from pydantic import BaseModel, ConfigDict, SecretStr

from enrichlog import (
    AsyncEnricher,
    EnricherConfigError,
    EnricherFactory,
    LoggingSettings,
    configure_logging,
    get_logger,
)

output = arg(1)


class FaultsApi(AsyncEnricher):
    scheme = "faultsapi"
    name = "api"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        host: str
        user: str | None = None
        password: SecretStr | None = None
        client_secret: str | None = None
        retries: int = 1

    def __init__(self, *, params: Params, **options: Any) -> None:
        super().__init__(**options)
        self.params = params

    async def _startup(self) -> None:
        if self.params.host == "down.example":
            password = self.params.password.get_secret_value() if self.params.password else ""
            raise ConnectionError(
                f"cannot reach https://{self.params.user}:{password}@{self.params.host} "
                f"client_secret={self.params.client_secret}"
            )

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        raise RuntimeError("token=s3cret rejected")


API_URI = "faultsapi://app:s3cret@api.example?client_secret=s3cret"
DOWN_URI = "faultsapi://app:s3cret@down.example?client_secret=s3cret&name=down"
shown: dict[str, Any] = {}

settings = LoggingSettings(enrichers=["userdb://app:s3cret@db/app", API_URI])
shown["settings_repr"] = repr(settings)
shown["settings_str"] = str(settings)
shown["settings_json"] = settings.model_dump_json()
shown["to_uri"] = EnricherFactory.to_uri(EnricherFactory.build(API_URI))

errors = []
for bad in (
    API_URI + "&colour=blue",
    API_URI + "&retries=many",
    API_URI + "#fragment",
    "nosuch://app:s3cret@host?authorization=s3cret&api_key=s3cret",
    "faultsapi://app:s3cret@[::1/x?client_secret=s3cret",
):
    try:
        EnricherFactory.build(bad)
    except EnricherConfigError as exc:
        errors.append(str(exc))
shown["errors"] = errors
try:
    # A URI passed in code, where enricher objects are expected.
    configure_logging(enrichers=["faultsapi://app:s3cret@h?client_secret=s3cret"], output=output)
except EnricherConfigError as exc:
    shown["configure_error"] = str(exc)

container = configure_logging(
    settings=LoggingSettings(enrichers=[API_URI, DOWN_URI]), output=output, delivery="inline"
)
log = get_logger()
shown["health"] = container.health()
shown["repr"] = repr(container)
for i in range(6):  # "api" fails each call (its breaker opens), "down" is unavailable
    log.info("e", i=i)
container.flush(10)
shown["metrics"] = plain(container.metrics())
shown["report"] = dict(container.shutdown())
shown["health_after_shutdown"] = container.health()
summary(**shown)
