"""A TCP forwarder in its own process: stopping it makes a real server unreachable on its
port (connections refused), starting it again on that port brings the server back.

``python -m tests.tcp_proxy LISTEN_PORT TARGET_PORT`` forwards 127.0.0.1:LISTEN_PORT to
127.0.0.1:TARGET_PORT until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.servers import Server


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(listen: int, target: int) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def start_proxy(listen: int, target: int, logs: Path) -> Server:
    """The forwarder on ``listen``, up and listening."""
    argv = [sys.executable, "-m", "tests.tcp_proxy", str(listen), str(target)]
    server = Server(argv, listen, logs / f"proxy-{listen}.log")
    server.wait_ready()
    return server


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
