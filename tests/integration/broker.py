"""A real Mosquitto broker on a free loopback port (agentd.devtools.broker, as the benches and the demo use), and a fault injector."""

from __future__ import annotations

import contextlib
import socket
import threading

from agentd.devtools.broker import Broker, free_port

__all__ = ["Broker", "V311OnlyProxy", "free_port"]


class V311OnlyProxy:
    """A TCP front for a real broker that answers as a broker without MQTT 5 does.

    Mosquitto cannot be configured to refuse MQTT 5, so this injects that one fault: a
    CONNECT with protocol level 5 gets CONNACK "unacceptable protocol version" (0x01) and
    the connection is closed; any other connection is relayed to the broker untouched.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refused = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name="v311-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        try:
            while len(head) < 12:  # fixed header, remaining length, "\x00\x04MQTT", level
                chunk = conn.recv(12 - len(head))
                if not chunk:
                    conn.close()
                    return
                head += chunk
            n = 2 if head[1] < 0x80 else 3 if head[2] < 0x80 else 4
            level = head[n + 6] if len(head) > n + 6 else 0
            if head[0] >> 4 == 1 and level == 5:
                self.refused += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.sendall(head)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
        _pipe(conn, upstream)

    def close(self) -> None:
        self._closed = True
        self._server.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
