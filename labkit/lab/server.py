"""The backend's TCP server: listens on 0.0.0.0:<ports> and echoes.

Started by the lab inside the backend namespace.  Every endpoint address of
every service lands here (AnyIP route); a request is answered with the same
bytes, so one connection can carry many request/response exchanges.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(ports: list[int]) -> None:
    servers = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
        sock.bind(("0.0.0.0", port))
        sock.listen(65535)
        servers.append(await asyncio.start_server(_echo, sock=sock))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labkit.lab.server")
    ap.add_argument("--ports", default="80")
    args = ap.parse_args(argv)
    asyncio.run(serve([int(p) for p in args.ports.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
