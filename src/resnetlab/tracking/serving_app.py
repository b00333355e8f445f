"""The ASGI app `resnetlab serve` runs: MLflow's scoring server app
(`mlflow.pyfunc.scoring_server.app:app`, which loads the model named by its environment when
imported) behind a guard on the request body, which neither MLflow nor uvicorn bounds.

- A body over MAX_BODY_BYTES is refused with 413 before MLflow reads it: by its Content-Length,
  or, sent chunked, as soon as the bytes received pass the limit.
- A body nested deeper than MAX_JSON_DEPTH (brackets and braces; the images are 5 deep) is
  refused with 400 before `json.loads` recurses into it (100,000 levels: a RecursionError, 500).

Refusals are JSON as MLflow's own: {"error_code": ..., "message": "<one line>"}. The image count
and values are checked by the model (`serving.ClassProbabilities.predict`).
"""

from __future__ import annotations

import json
from typing import Any

# 1024 images (serving.MAX_IMAGES) of 3,072 pixels, each a JSON number of up to ~20 bytes
# ("0.12345678901234567, "): ~63 MB. Larger bodies are refused before they are read.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32

_OPENING = frozenset(b"[{")
_CLOSING = frozenset(b"]}")


def json_depth(body: bytes) -> int:
    """The deepest nesting of brackets and braces in `body`, strings included (an image holds no
    strings; a bracket in one only counts against the request)."""
    import numpy as np

    raw = np.frombuffer(body, dtype=np.uint8)
    steps = np.zeros(len(raw), dtype=np.int32)
    steps[np.isin(raw, list(_OPENING))] = 1
    steps[np.isin(raw, list(_CLOSING))] = -1
    return int(np.cumsum(steps).max(initial=0))


def guard(app: Any) -> Any:
    """`app` behind the checks of the module docstring, for every POST request."""

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _refuse(send, 413, "REQUEST_LIMIT_EXCEEDED", _too_large(int(length)))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _refuse(send, 413, "REQUEST_LIMIT_EXCEEDED", _too_large(size, "over "))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            await _refuse(
                send,
                400,
                "INVALID_PARAMETER_VALUE",
                f"the request body nests {depth} levels deep; at most {MAX_JSON_DEPTH} "
                "(images are N x 3 x S x S lists under 'inputs')",
            )
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return guarded


def _too_large(size: int, over: str = "") -> str:
    return (
        f"the request body is {over}{size} bytes; at most {MAX_BODY_BYTES} "
        f"({MAX_BODY_BYTES // 2**20} MiB): send fewer images per request"
    )


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    content = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _app() -> Any:
    from mlflow.pyfunc.scoring_server.app import app

    return guard(app)


def __getattr__(name: str) -> Any:  # `resnetlab.tracking.serving_app:app`, built when uvicorn asks
    if name == "app":
        return _app()
    raise AttributeError(name)
