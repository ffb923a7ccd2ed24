"""The coordinator's public face: a TLS gateway that lets SuperNodes reach the SuperLink's Fleet API and nothing else.

Flower 1.42's SuperLink serves its Fleet API (what SuperNodes call), its Control API (`flwr run`, `flwr supernode
register`, listing and stopping runs) and its runtime API (the ServerApp's) on one HTTP port, and without Flower
Enterprise's account authentication anyone who reaches that port can use all three. So the coordinator binds the
SuperLink to 127.0.0.1, where only its own operator can reach it, and puts this gateway on the address lenders
dial: it terminates TLS with the certificate carrying that address's names, forwards `POST /v1/fleet/...` to the
SuperLink, and answers 404 to everything else (`/v1/control/...`, `/v1/runtime/...`). SuperNode authentication is
unchanged: its signed headers pass through and the SuperLink checks them.

    python -m server.fleet_gateway --listen HOST:PORT --certfile server.crt --keyfile server.key \\
        --upstream https://127.0.0.1:PORT --upstream-ca ca.crt
"""

from __future__ import annotations

import argparse
import ssl

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

FLEET_PREFIX = "/v1/fleet/"
# Headers that describe one hop, not the request: never forwarded.
HOP_BY_HOP = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-encoding",
}
MAX_BODY = 512 * 1024 * 1024  # a model update is far smaller; anything larger is not a Fleet message


def create_gateway(upstream: str, upstream_ca: str | None) -> FastAPI:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=upstream_ca) if upstream_ca else True
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(600.0))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(FLEET_PREFIX + "{path:path}")
    async def fleet(path: str, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return Response(status_code=413)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        reply = await client.post(FLEET_PREFIX + path, content=body, headers=headers)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(content=reply.content, status_code=reply.status_code, headers=out)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def refuse(path: str) -> Response:  # the Control and runtime APIs stay on the coordinator's own host
        return Response(status_code=404)

    return app


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-ca", default=None)
    args = parser.parse_args(argv)
    host, port = args.listen
    uvicorn.run(
        create_gateway(args.upstream, args.upstream_ca),
        host=host,
        port=port,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
