"""A TCP proxy the tests can cut: it stands between a client and RabbitMQ
to make the broker unreachable for that client alone."""
from __future__ import annotations

import eventlet
from eventlet.green import socket


class CuttableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = eventlet.listen(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._sockets: set = set()
        self._pipes: set = set()
        self._server = eventlet.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                pipe = eventlet.spawn(self._pipe, src, dst)
                self._pipes.add(pipe)
                pipe.link(lambda gt: self._pipes.discard(gt))

    def _pipe(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, EOFError):  # the other side went, or we cut it
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except (OSError, EOFError):
                    pass
            self._sockets.discard(src)
            self._sockets.discard(dst)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.open = False
        # end the pipes before closing their sockets: a greenthread left waiting
        # on a closed socket keeps a hub listener for its file descriptor, and
        # the next socket to get that number (a database connection, say) fails
        for pipe in list(self._pipes):
            pipe.kill()
        self._pipes.clear()
        for s in list(self._sockets):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._sockets.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self._server.kill()
        self.listener.close()
