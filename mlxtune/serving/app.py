"""The OpenAI-compatible HTTP routes of ``serve`` (Starlette), and running them with uvicorn.

``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``,
streamed as server-sent events (``data: {chunk}`` lines, the last chunk with its
``finish_reason``, then ``data: [DONE]``) or answered whole. Generation happens
on the engine's worker thread; a route validates the body, queues a job and
relays what the worker delivers. Every error is OpenAI-shaped JSON
(``schema.error_body``), and none stops the server. A client that goes away
cancels its job, queued or running, which frees the worker. A POST must be
``application/json`` of at most ``MAX_BODY`` bytes (a page of another site cannot
send that without a CORS preflight, which is refused); served on a loopback
address, a request must name the host as localhost (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import time
import uuid
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine
from .schema import MAX_BODY, Request, RequestError, chat_request, completion_request, error_body, parse_body

_GONE = object()  # the client disconnected
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the Host names a loopback server answers


def create_app(engine: Engine, api_key: str | None = None, loopback: bool = True) -> Starlette:
    """The Starlette application answering with ``engine``; ``api_key``: require ``Authorization: Bearer <key>``;
    ``loopback`` (served on a loopback address): refuse a Host header other than localhost's."""
    created = int(time.time())

    def authorize(request: HttpRequest) -> None:
        if loopback and _host_name(request.headers.get("host", "")) not in LOCAL_HOSTS:
            raise RequestError("This server answers only requests to localhost, 127.0.0.1 or [::1] (the Host header names another host).", status=403, code="host_not_allowed")
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise RequestError("Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.", status=401, code="invalid_api_key")

    async def models(request: HttpRequest) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [_model_card(m, created) for m in engine.models]})

    async def model(request: HttpRequest) -> Response:
        authorize(request)
        name = request.path_params["name"]
        engine.resolve(name)
        return JSONResponse(_model_card(name, created))

    def endpoint(parse: Callable[[dict], Request]):
        async def route(request: HttpRequest) -> Response:
            authorize(request)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise RequestError(f"Send the body as JSON with 'Content-Type: application/json' (not {media or 'none'!r}).", status=415, code="unsupported_media_type")
            req = parse(parse_body(await _body(request)))
            return await _answer(engine, request, req, engine.resolve(req.model))

        return route

    async def request_error(request: HttpRequest, exc: RequestError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{exc.detail}: {request.method} {request.url.path}", kind), status_code=exc.status_code)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", endpoint(chat_request), methods=["POST"]),
        Route("/v1/completions", endpoint(completion_request), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={RequestError: request_error, HTTPException: http_error})


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8080`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


async def _body(request: HttpRequest) -> bytes:
    """The request body, or a 413 RequestError past ``MAX_BODY`` bytes (by Content-Length, then as it is read)."""
    too_big = RequestError(f"The request body is larger than {MAX_BODY // (1024 * 1024)} MB.", status=413, code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise too_big
        parts.append(part)
    return b"".join(parts)


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "mlxtune"}


async def _answer(engine: Engine, request: HttpRequest, req: Request, adapter: str | None) -> Response:
    """Queue the request and answer it: a stream of chunks, or one JSON body."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()

    def deliver(item: tuple) -> None:  # on the worker thread
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the server is stopping
            pass

    job = engine.submit(req, adapter, deliver)
    gone = asyncio.ensure_future(_disconnected(request))
    streaming = False
    try:
        first = await _next(items, gone)
        if first is _GONE:
            return Response(status_code=499)
        if first[0] == "error":
            raise first[1]
        reply = _Reply(req, first[1])
        if req.stream:
            gone.cancel()  # Starlette's StreamingResponse watches for the disconnect from here on
            streaming = True
            events = StreamingResponse(_events(reply, items, job), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return _CancelAfter(events, job)
        texts = []
        while True:
            item = await _next(items, gone)
            if item is _GONE:
                return Response(status_code=499)
            if item[0] == "error":
                raise item[1]
            if item[0] == "end":
                return JSONResponse(reply.whole("".join(texts), item[1], item[2]))
            texts.append(item[1])
    finally:
        if not streaming:
            job.cancel()  # a no-op once the job has ended; a stream's job is cancelled by _CancelAfter
        gone.cancel()


async def _events(reply: "_Reply", items: asyncio.Queue, job) -> Any:
    """The server-sent events of a streamed answer; cancelled (the client left), the job is cancelled too."""
    try:
        yield _sse(reply.chunk(role=True))
        while True:
            item = await items.get()
            if item[0] == "piece":
                yield _sse(reply.chunk(text=item[1]))
            elif item[0] == "end":
                yield _sse(reply.chunk(finish=item[1]))
                if reply.req.include_usage:
                    yield _sse(reply.usage_chunk(item[2]))
                break
            else:  # an error after the answer began: said in the stream, as OpenAI does
                yield _sse(item[1].body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


class _CancelAfter:
    """An ASGI response that cancels ``job`` once ``response`` has been sent or abandoned: a client that
    leaves before the stream's body starts never runs ``_events`` (so not its ``finally``)."""

    def __init__(self, response: Response, job):
        self.response, self.job = response, job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.job.cancel()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _next(items: asyncio.Queue, gone: asyncio.Future) -> Any:
    """The next item the worker delivered, or _GONE once the client has disconnected."""
    get = asyncio.ensure_future(items.get())
    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    return _GONE


async def _disconnected(request: HttpRequest) -> None:
    """Returns when the client has gone (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Reply:
    """The OpenAI response objects of one request (chat or text completion), whole or as chunks."""

    def __init__(self, req: Request, prompt_tokens: int):
        self.req, self.prompt_tokens = req, prompt_tokens
        self.id = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.req.model, "system_fingerprint": None}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": self.prompt_tokens + completion_tokens}

    def whole(self, text: str, finish: str, completion_tokens: int) -> dict:
        if self.req.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage(completion_tokens)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": self.usage(completion_tokens)}

    def chunk(self, text: str = "", role: bool = False, finish: str | None = None) -> dict:
        if self.req.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if finish else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        return {**self._head("text_completion"), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    def usage_chunk(self, completion_tokens: int) -> dict:
        obj = "chat.completion.chunk" if self.req.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage(completion_tokens)}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port), bound before the server starts so its address is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from ..errors import UsageError

        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port or --host") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])


class Background:
    """``app`` served by uvicorn on a thread of this process (tests, benchmarks): ``url``, then ``stop()``."""

    def __init__(self, app: Starlette, sock: socket.socket):
        import threading

        import uvicorn

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="mlxtune-serve-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
