"""The JavaScript client, served by every fastws server at ``/fastws-client.js``.

The module is ``fastws/static/fastws-client.js`` (types beside it in ``fastws-client.d.ts``), the
same file that the npm package ``fastws-client`` publishes (``fastws/static/package.json``). A
server answers ``GET``/``HEAD /fastws-client.js`` (and ``/fastws-client.d.ts``) before its app
sees the request, unless it was started with ``js_client=False`` (``[server] js_client = false``
in a config file): as ``text/javascript``, with an ``ETag`` (a ``304`` for a matching
``If-None-Match``), ``Cache-Control: public, max-age=3600``, ``Access-Control-Allow-Origin: *``
(a public file, so that pages of other origins may import it) and ``X-Content-Type-Options:
nosniff``.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from fastws.handshake import Request, Response

__all__ = ["PATH", "TYPES_PATH", "routes", "source"]

PATH = "/fastws-client.js"
TYPES_PATH = "/fastws-client.d.ts"

_FILES = {PATH: ("fastws-client.js", "text/javascript; charset=utf-8"),
          TYPES_PATH: ("fastws-client.d.ts", "application/typescript; charset=utf-8")}
_cache: dict[str, tuple[bytes, str]] = {}


def source(name: str = "fastws-client.js") -> bytes:
    """The bytes of the shipped file ``name`` (``fastws-client.js`` or ``fastws-client.d.ts``)."""
    return resources.files("fastws").joinpath("static").joinpath(name).read_bytes()


def _file(path: str) -> tuple[bytes, str]:
    got = _cache.get(path)
    if got is None:
        body = source(_FILES[path][0])
        got = _cache[path] = (body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return got


def _serve(ws: Any, request: Request) -> Response:
    body, etag = _file(request.path)
    headers = [("ETag", etag), ("Cache-Control", "public, max-age=3600"),
               ("Access-Control-Allow-Origin", "*"), ("X-Content-Type-Options", "nosniff")]
    match = request.headers.get("if-none-match")
    if match is not None and etag in [m.strip() for m in match.split(",")]:
        return Response(304, b"", headers)
    return Response(200, body, headers, content_type=_FILES[request.path][1])


def routes() -> dict[str, Any]:
    """The server routes (path -> route) that serve the client."""
    from fastws.metrics import _http_route

    route = _http_route(_serve)
    return {PATH: route, TYPES_PATH: route}
