"""The one worker thread that generates for ``serve``: a queue of jobs, the model selection, stop strings, usage.

Generation is not thread-safe (and mlx ties arrays to a thread's stream), so the
model is loaded and every token generated on one thread; requests wait in a
FIFO queue and are answered in turn. A job reports what happens through its
``deliver`` callback (called on the worker thread; the web side hands items to
its event loop): ``("start", prompt_tokens)``, then ``("piece", str)`` pieces, then
``("end", finish_reason, completion_tokens)``; or ``("error", RequestError)``
instead. A cancelled job (its client went away) stops at its next token, and
the worker takes the next one. At most ``MAX_QUEUED`` jobs wait (429 beyond).
Whatever one job raises (a BaseException too) fails that job alone: a 500 whose
message points to the server log (``logging``, on stderr), where the details go;
should the worker's loop itself fail, waiting and later jobs get 503.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .schema import DEFAULT_MAX_TOKENS, Request, RequestError

MAX_QUEUED = 64  # jobs waiting for the worker; more are refused with 429
INTERNAL = "Internal error, see the server log."
log = logging.getLogger("mlxtune.serving")


class StopText:
    """Text as it streams, cut before the first of the stop strings; holds back what may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(the text safe to send now, whether a stop string was reached)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Job:
    request: Request
    adapter: str | None  # None: the base model
    deliver: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """Loads the model on its worker thread (``load`` returns an ``inference.Switchable``) and answers jobs in order."""

    def __init__(self, load: Callable[[], Any], max_queued: int = MAX_QUEUED):
        self._load = load
        self._max_queued = max_queued
        self._dead: BaseException | None = None  # the worker stopped on this: every job is answered 503
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.served: Any = None  # the inference.Switchable, once loaded
        self.context: int | None = None
        self.counts = {"answered": 0, "cancelled": 0, "failed": 0}  # jobs so far, by how they ended
        self._thread = threading.Thread(target=self._work, name="mlxtune-serve-worker", daemon=True)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker and wait until the model is loaded (re-raising what loading raised)."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    @property
    def models(self) -> list[str]:
        """The names ``model`` may take: the base's, then each adapter's."""
        return [self.served.base_name, *self.served.adapters]

    def resolve(self, model: str) -> str | None:
        """The adapter a request's ``model`` names (None: the base), or a 404 RequestError."""
        if model == self.served.base_name:
            return None
        if model in self.served.adapters:
            return model
        raise RequestError(f"The model '{model}' does not exist here. Choose one of: {', '.join(self.models)}.", status=404, param="model", code="model_not_found")

    def submit(self, request: Request, adapter: str | None, deliver: Callable[[tuple], None]) -> Job:
        """Queue a request; its items come through ``deliver`` (on the worker thread); 429 when the queue is full."""
        if self._dead is not None:
            raise _unavailable()
        if self._jobs.qsize() >= self._max_queued:
            raise RequestError(f"Too many requests are waiting ({self._max_queued}): retry in a moment.", status=429, code="rate_limit_exceeded", type_="rate_limit_error")
        job = Job(request, adapter, deliver)
        self._jobs.put(job)
        return job

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        try:
            from ..models.config import read_config

            self.served = self._load()
            config = read_config(self.served.loaded.model_dir)
            self.context = config.get("max_position_embeddings")
        except BaseException as e:  # reported by start()
            self._failure = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while (job := self._jobs.get()) is not None:
                self._answer(job)
        except BaseException as e:  # the loop itself failed: answer what waits with 503, refuse what comes
            self._dead = e
            log.critical("the serve worker stopped: %s: %s", type(e).__name__, e, exc_info=e)
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.deliver(("error", _unavailable()))

    def _answer(self, job: Job) -> None:
        """Run one job; whatever it raises (BaseException included) fails that job only."""
        if job.cancelled.is_set():
            self.counts["cancelled"] += 1
            return
        try:
            self.counts["answered" if self._run(job) else "cancelled"] += 1
        except RequestError as e:
            self.counts["failed"] += 1
            job.deliver(("error", e))
        except BaseException as e:  # a bug or a backend failure: this request fails, the server goes on
            self.counts["failed"] += 1
            log.error("a request failed: %s: %s", type(e).__name__, e, exc_info=e)
            job.deliver(("error", RequestError(INTERNAL, status=500, type_="server_error")))

    def _run(self, job: Job) -> bool:
        """Answer ``job``; False when it was cancelled part way."""
        from ..inference import stream

        req, served = job.request, self.served
        served.select(job.adapter)
        loaded = served.loaded
        ids = _chat_ids(loaded.tokenizer, req.messages) if req.chat else self._prompt_ids(req.prompt)
        if self.context and len(ids) >= self.context:
            param = "messages" if req.chat else "prompt"
            raise RequestError(f"This model's maximum context length is {self.context} tokens. However, your {param} has {len(ids)} tokens. Please shorten it.", param=param, code="context_length_exceeded")
        max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
        if self.context:
            max_tokens = min(max_tokens, self.context - len(ids))
        job.deliver(("start", len(ids)))
        stops, count, finish = StopText(req.stop), 0, None
        chunks = stream(loaded, ids, max_tokens, req.temperature, req.top_p, req.seed)
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    return False
                count += 1
                text, stopped = stops.feed(chunk.text)
                if text:
                    job.deliver(("piece", text))
                if stopped:
                    finish = "stop"
                    break
                if chunk.finish_reason:
                    finish = "stop" if chunk.finish_reason == "stop" else "length"
                    break
        finally:
            chunks.close()
        tail = stops.flush()  # what was held back as the possible start of a stop string (nothing once one was reached)
        if tail:
            job.deliver(("piece", tail))
        job.deliver(("end", finish or "length", count))
        return True

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        from ..data.rendering import hf_tokenizer

        if isinstance(prompt, list):
            vocab = len(hf_tokenizer(self.served.loaded.tokenizer))
            if max(prompt) >= vocab:
                raise RequestError(f"'prompt' has token id {max(prompt)}, beyond this model's vocabulary of {vocab}.", param="prompt")
            return list(prompt)
        from ..inference import build_prompt

        return build_prompt(self.served.loaded.tokenizer, prompt, chat=False)  # as generate --no-chat encodes it


def _unavailable() -> RequestError:
    return RequestError("The server's worker has stopped: restart the server (see its log).", status=503, type_="server_error")


def _chat_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The prompt of a chat request; a 400 when the model has no chat template or its template refuses the messages."""
    import jinja2

    from ..data.rendering import has_chat_template, hf_tokenizer
    from ..inference import chat_prompt

    if not has_chat_template(hf_tokenizer(tokenizer)):
        raise RequestError("This model has no chat template: send a 'prompt' to POST /v1/completions instead.", param="messages", code="no_chat_template")
    try:
        return chat_prompt(tokenizer, messages)
    except (jinja2.TemplateError, ValueError) as e:
        raise RequestError(f"The model's chat template refuses these messages: {e}", param="messages") from None
