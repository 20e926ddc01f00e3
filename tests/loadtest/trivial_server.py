"""The cheapest possible HTTP/1.1 keep-alive server: a fixed 200 answer to every request.

Used to measure the *generator* alone: with a server this cheap (in its own process, on its
own core when there is one), whatever rate the harness fails to reach is the harness's limit.
Run: ``python -m tests.loadtest.trivial_server PORT``
"""

from __future__ import annotations

import asyncio
import sys

BODY = b'{"results":[],"encoder":"student","timings":{}}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
READY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            path = head.split(b" ", 2)[1] if b" " in head else b""
            if path.startswith(b"/v1/search"):
                self.transport.write(RESPONSE)
            elif path.startswith(b"/readyz"):
                self.transport.write(READY)
            else:
                self.transport.write(NOT_FOUND)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
