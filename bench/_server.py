"""A loopback HTTP server in its own process: ``python -m bench._server --app plain|capture``.

uvicorn binds the socket itself (port 0), so TCP_NODELAY is set (docs/platform-facts.md,
"Measuring on loopback": a hand-made socket adds ~40 ms per answer, Nagle + delayed ACK). The
port is written to ``--port-file`` once uvicorn has started; the parent polls that file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def build_app(kind: str) -> Any:
    from entra_passthrough._caller import current_caller

    async def tool(request: Request) -> PlainTextResponse:
        # What a tool endpoint does first in both variants: ask who the caller is.
        caller = current_caller()
        return PlainTextResponse("user" if caller is not None and caller.active else "anon")

    app: Any = Starlette(routes=[Route("/", tool, methods=["GET", "POST"])])
    if kind == "capture":
        from entra_passthrough import CallerMiddleware

        app = CallerMiddleware(app)
    return app


async def serve(kind: str, port_file: Path, *, app: Any = None) -> None:
    """Serve ``build_app(kind)`` (or ``app``) until killed; the port goes to ``port_file``."""
    config = uvicorn.Config(
        build_app(kind) if app is None else app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(2000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.005)
    if not server.started:
        raise SystemExit("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "url": f"http://127.0.0.1:{port}"}))
    tmp.replace(port_file)
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", choices=["plain", "capture"], default="plain")
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.app, args.port_file))


if __name__ == "__main__":
    main()
