"""A listener that accepts connections and never answers: the controlled slowness for deadline tests.

A slow model races real work (how slow is slow enough depends on the machine); a server that never
answers is slow by construction, so a call against it ends only by its deadline.
"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """Accepts every connection on 127.0.0.1 and keeps it open, unread and unanswered."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
        for conn in self.connections:
            conn.close()
