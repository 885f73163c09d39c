"""The HTTP server behind the ``metrics_port`` setting: ``GET /metrics``
answers with ``prometheus_client.REGISTRY``'s exposition.

Imported only when the setting is used (and so the ``prometheus`` extra is
installed: the setting checks it).
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from ..engine.runtime import leave_signals_to_the_main_thread

__all__ = ["MetricsEndpoint"]


class MetricsEndpoint:
    """An HTTP server of ``prometheus_client.REGISTRY`` at ``/metrics``, in
    a daemon thread; stopping it closes its socket within a tenth of a
    second."""

    _POLL = 0.1  # seconds between the server loop's checks for shutdown

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=self._serve,
            name=f"enrichlog-metrics:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _serve(self) -> None:
        leave_signals_to_the_main_thread()
        self._server.serve_forever(self._POLL)

    @classmethod
    def start(cls, host: str, port: int) -> MetricsEndpoint:
        """Listen on ``host:port`` (0: a free port) and serve.

        Raises:
            OSError: the address cannot be listened on.
        """
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = _MetricsServer6 if family == socket.AF_INET6 else _MetricsServer
        return cls(server_class((host, port), _MetricsHandler))

    def forget(self) -> None:
        """In a forked child: close this process's copy of the socket, without
        waiting for the server thread (it runs in the parent only)."""
        self._server.server_close()

    def stop(self) -> None:
        """Stop serving and close the socket (the port is free on return)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics``: the exposition of ``prometheus_client.REGISTRY`` in
    the format the ``Accept`` header asks for."""

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path not in {"/metrics", "/metrics/"}:
            self._answer(404, "text/plain; charset=utf-8", b"Not Found: see /metrics\n")
            return
        encode, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._answer(200, content_type, encode(REGISTRY))

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (a scrape every few seconds)."""
