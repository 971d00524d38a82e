"""workflow.serve: serve export/policy.pt over HTTP (FastAPI on uvicorn) and log every decision as an mdp table.

Runs until SIGTERM or SIGINT, which stop accepting requests, finish the ones in flight and flush the decision
log. See reagent_recsys/serving/ and the README's "Serving" section for the API.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from reagent_recsys.artifacts import write_json_atomic
from reagent_recsys.config import PipelineConfig


def serve(config: PipelineConfig) -> dict[str, Any]:
    """Serve until stopped; returns the decision log's counts."""
    import uvicorn

    from reagent_recsys.serving.app import build_server, create_app, serve_paths

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    cfg = config.serve
    log_dir = serve_paths(config)[1]
    server = build_server(config)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            history = server.policy.layout.history
            kept = f"; {len(history['ids'])} history features kept per session" if history else ""
            print(f"serving {server.policy_path} version {server.policy.version} on http://{cfg.host}:{port} "
                  f"(decision log {log_dir}{kept})", file=sys.stderr, flush=True)
            if cfg.port_file:
                write_json_atomic(cfg.port_file, {"port": port, "host": cfg.host})

    uv = Server(uvicorn.Config(create_app(server), lifespan="on", access_log=False, log_level="warning",
                               loop="auto", http="auto", timeout_graceful_shutdown=30))
    uv.run(sockets=[sock])
    return {"log_dir": str(log_dir), **server.log.counts, "pending": len(server.log.pending)}
