"""A loopback TCP listener in a thread, for tests of whole `probe` processes: it accepts every
connection and either closes it at once (a tcp:// target that works) or holds it open without a
word (a TLS handshake to it waits out its timeout), counting what it accepted."""

from __future__ import annotations

import contextlib
import socket
import threading


class Listener:
    def __init__(self, *, hold: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.hold = hold
        self.accepted = 0
        self._held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.hold:
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)
        for conn in self._held:
            conn.close()
