"""The HTTP API: FastAPI routes over the served model.

    POST /v1/predict[?top=K&invert=auto|yes|no]  images -> top-k classes, the model's run and step
    GET  /v1/model                               run, step, classes, input shape, test accuracy, ...
    GET  /healthz                                the process answers (liveness)
    GET  /readyz                                 a model is loaded (readiness)
    GET  /                                       the drawing page (page.html)

Every refusal is JSON {"error": "..."} with a 4xx (503 while loading or overloaded, with
Retry-After), never a 500 for bad input. Decoding large images runs on worker threads, at
most `decode_slots` at once (small ones decode in less time than a thread hop takes);
inference runs on the batcher's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from runner.serve import inputs
from runner.serve.batcher import Overloaded
from runner.serve.inputs import BadInput, Limits
from runner.serve.models import Models
from runner.use.predict import Prediction, top_classes

RETRY_AFTER_S = "1"


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    models: Models,
    limits: Limits = Limits(),
    decode_slots: int = 2,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    # /docs: Swagger UI with its scripts served from the package (fastapi-offline); FastAPI's
    # own page loads them from a CDN, which a cluster may not reach. No /redoc: ReDoc's script
    # still fetches its logo from cdn.redoc.ly.
    app = FastAPIOffline(title="runner serve", redoc_url=None, lifespan=lifespan)
    decoding = asyncio.Semaphore(decode_slots)
    page = resources.files("runner.serve").joinpath("page.html").read_text()

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, e: BadInput) -> JSONResponse:
        return error(e.status, e.message)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> JSONResponse:
        return error(503, f"overloaded: {e}; retry shortly", {"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail), dict(e.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect) -> Response:
        # The client left (or guard.py timed it out, answering 408) before its body arrived:
        # nobody to answer, nothing wrong here. Unhandled, uvicorn logged a traceback for it.
        return Response(status_code=400)  # uvicorn drops it: the connection is gone

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        return error(422, f"{where}: {first['msg']}")

    def served_or_503() -> Any:
        if models.current is None:
            raise HTTPException(503, "loading the model; retry shortly", {"Retry-After": RETRY_AFTER_S})
        return models.current

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        served = served_or_503()
        return {"status": "ready", "run": served.loaded.run, "step": served.loaded.info["step"]}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        served_or_503()
        return models.describe()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.post("/v1/predict")
    async def predict(
        request: Request,
        top: int = Query(3, ge=1, le=1000, description="Classes per image."),
        invert: Literal["auto", "yes", "no"] = Query("auto", description="As runner predict --invert."),
    ) -> dict[str, Any]:
        served = served_or_503()  # this request's model to the end, whatever a reload swaps in
        trained = served.loaded.trained
        with served.batcher.coming():  # a batch about to run waits for this one (up to --wait-ms)
            body = await read_body(request, limits.max_body_bytes)
            content_type = request.headers.get("content-type")
            if inputs.media_type(content_type) == "multipart/form-data":
                items = inputs.files_to_items(await form_files(request, body, limits), limits)
            else:
                items = inputs.items_of(content_type or "", body, limits)
            if inputs.cheap(items):  # a digit drawn on the page: decoded here, faster than a thread hop
                pixels, inverted = inputs.to_input(trained, items, invert, limits)
            else:  # large images: on a worker thread, a few at a time, the event loop free meanwhile
                async with decoding:
                    pixels, inverted = await run_in_threadpool(inputs.to_input, trained, items, invert, limits)
        tops = top_classes(trained.classes, await served.batcher.submit(pixels), top)
        predictions = [Prediction(i.name, inv, t) for i, inv, t in zip(items, inverted, tops, strict=True)]
        info = served.loaded.info
        return {
            "run": info["run"],
            "step": info["step"],
            "weights": info["weights"],
            "predictions": [p.to_json() for p in predictions],
        }

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed `limit` bytes:
    from Content-Length before reading any, or while reading a chunked one."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadInput(413, f"body of {int(declared):,} bytes, more than the {limit:,} bytes allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(413, f"body over the {limit:,} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


async def form_files(request: Request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """The files of a multipart body already read (and size-checked), (filename, content) each."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=limits.max_images + 1, max_fields=100)
    try:
        return [(v.filename or "", await v.read()) for _, v in form.multi_items() if isinstance(v, UploadFile)]
    finally:
        await form.close()
