"""Reading a Prometheus exposition the way Prometheus does: over HTTP,
parsed with ``prometheus_client``'s parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families


class Exposition:
    """The samples of one scrape: ``value(name, **labels)``."""

    def __init__(self, text: str, content_type: str = "") -> None:
        self.text = text
        self.content_type = content_type
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]
        self.types = {family.name: family.type for family in self.families.values()}

    @property
    def sample_names(self) -> set[str]:
        return {sample.name for sample in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` with exactly ``labels`` (``le`` aside)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def series(self, name: str) -> list[Mapping[str, str]]:
        """The label sets of every sample of ``name``."""
        return [s.labels for s in self.samples if s.name == name]

    def labels_of(self, name: str) -> set[str]:
        return {label for labels in self.series(name) for label in labels}


def scrape(port: int, host: str = "127.0.0.1", path: str = "/metrics") -> Exposition:
    """GET ``http://{host}:{port}{path}`` and parse it."""
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
        return Exposition(response.read().decode("utf-8"), response.headers["Content-Type"])
