"""``mlxtune serve`` held to the official ``openai`` client, against a real uvicorn server on a free port (issue 16).

A tiny random model with two adapters (their B matrices made large, so that each
answers differently from the base), on each backend: answers equal ``generate``'s
token for token (greedy and seeded sampling), streamed deltas join to the same
text, 16 concurrent requests are all answered, bad requests get OpenAI-shaped
errors and the server goes on, the API key is required when set, and a client
that leaves mid-stream frees the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from mlxtune.cli import cli  # noqa: E402
from mlxtune.formats import safetensors as npio  # noqa: E402
from mlxtune.generate import build_prompt, generate  # noqa: E402
from mlxtune.inference import load, load_switchable  # noqa: E402
from mlxtune.serving.app import Background, bind, create_app  # noqa: E402
from mlxtune.serving.engine import Engine, StopText  # noqa: E402

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
PROMPT = "Tidy up: bob to ship release fri"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> list[Path]:
    """Two adapters on the tiny model (rank 4, q and v), trained a step, then with B large and different."""
    work = tmp_path_factory.mktemp("serve")
    data = work / "notes.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:8]))
    out = []
    for i, name in enumerate(["alpha", "beta"]):
        run = work / name
        r = CliRunner().invoke(cli, ["lora", "--data", str(data), "--model", str(tiny_model), "--iters", "1", "--backend", "numpy", "-o", str(run), "--no-report"])
        assert r.exit_code == 0, r.output
        weights, meta = npio.read_safetensors(run / "adapters.safetensors")
        rng = np.random.default_rng(i)
        weights = {k: (rng.normal(0, 0.5, v.shape).astype(v.dtype) if k.endswith("lora_b") else v) for k, v in weights.items()}
        npio.write_safetensors(run / "adapters.safetensors", weights, metadata=meta)
        out.append(run)
    return out


@pytest.fixture(scope="module", params=["mlx", "numpy"])
def server(request, tiny_model, runs):
    """(base url, engine, backend): the tiny model and both adapters, served with an API key on a free port."""
    from conftest import HAVE_MLX

    if request.param == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    engine = Engine(lambda: load_switchable(str(tiny_model), runs, backend=request.param))
    engine.start()
    bg = Background(create_app(engine, KEY), bind("127.0.0.1", 0))
    yield bg.url, engine, request.param
    bg.stop()
    engine.close()


def client(url: str, key: str = KEY, **kw) -> "openai.OpenAI":
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60, **kw)


def expected(model: Path, adapter: Path | None, backend: str, prompt: str = PROMPT, chat: bool = True, **sampling) -> tuple[str, int, int]:
    """(text, prompt tokens, generated tokens) of ``generate`` with the same settings."""
    loaded = load(str(model), adapter, backend=backend)
    chunks = list(generate(loaded, prompt, chat=chat, **sampling))
    return "".join(c.text for c in chunks), len(build_prompt(loaded.tokenizer, prompt, chat)), len(chunks)


def test_models_lists_the_base_and_each_adapter_by_its_run_directory(server):
    url, _, _ = server
    assert [m.id for m in client(url).models.list()] == ["model", "alpha", "beta"]


@pytest.mark.parametrize("sampling", [{"temp": 0.0}, {"temp": 0.9, "top_p": 0.9, "seed": 7}])
def test_chat_completions_equal_generate_for_the_base_and_each_adapter(server, tiny_model, runs, sampling):
    url, _, backend = server
    c = client(url)
    answers = {}
    for name, adapter in [("model", None), ("alpha", runs[0]), ("beta", runs[1]), ("model", None)]:
        text, n_prompt, n_generated = expected(tiny_model, adapter, backend, max_tokens=12, **sampling)
        kw = {"temperature": sampling["temp"], "top_p": sampling.get("top_p", 1.0), "seed": sampling.get("seed"), "max_tokens": 12}
        r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPT}], **kw)
        assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_generated)
        assert r.choices[0].finish_reason == ("length" if n_generated == 12 else "stop") and r.model == name
        deltas = list(c.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPT}], stream=True, stream_options={"include_usage": True}, **kw))
        assert "".join(d.choices[0].delta.content or "" for d in deltas if d.choices) == text
        assert [d.choices[0].finish_reason for d in deltas if d.choices][-1] == r.choices[0].finish_reason
        assert deltas[-1].usage.completion_tokens == n_generated
        answers[name] = text
    assert len(set(answers.values())) == 3, answers  # the adapters change the answer: switching really switches


def test_text_completions_equal_generate_without_the_chat_template(server, tiny_model, runs):
    url, _, backend = server
    text, n_prompt, _ = expected(tiny_model, runs[1], backend, "Once upon a time", chat=False, max_tokens=10)
    r = client(url).completions.create(model="beta", prompt="Once upon a time", max_tokens=10, temperature=0)
    assert r.choices[0].text == text and r.usage.prompt_tokens == n_prompt
    streamed = client(url).completions.create(model="beta", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_a_stop_string_ends_the_text_before_it(server, tiny_model, runs):
    url, _, backend = server
    text, _, _ = expected(tiny_model, runs[0], backend, max_tokens=24, temp=0.0)
    stop = text[5:8]
    assert stop and text.find(stop) >= 0
    c = client(url)
    r = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": PROMPT}], max_tokens=24, temperature=0, stop=[stop, "never-said"])
    assert r.choices[0].message.content == text[: text.find(stop)] and r.choices[0].finish_reason == "stop"
    deltas = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": PROMPT}], max_tokens=24, temperature=0, stop=stop, stream=True)
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == text[: text.find(stop)]


def test_sixteen_concurrent_requests_are_all_answered(server, tiny_model, runs):
    url, _, backend = server
    models = ["model", "alpha", "beta"]
    want = {m: expected(tiny_model, a, backend, max_tokens=8, temp=0.0)[0] for m, a in zip(models, [None, *runs])}
    c = client(url)

    def ask(i: int) -> tuple[str, str]:
        m = models[i % 3]
        if i % 2:
            deltas = c.chat.completions.create(model=m, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0, stream=True)
            return m, "".join(d.choices[0].delta.content or "" for d in deltas)
        return m, c.chat.completions.create(model=m, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(16)))
    assert len(got) == 16 and all(text == want[m] for m, text in got)


def post(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/chat/completions", data=body, headers=headers), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server):
    url, engine, _ = server
    c = client(url)
    status, body = post(url, b'{"model": "model", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and "alpha" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="model", messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4)
    assert "maximum context length is 2048 tokens" in e.value.body["message"] and e.value.body["code"] == "context_length_exceeded"
    assert str(engine.context) in e.value.body["message"]
    for bad in [{"n": 2}, {"temperature": -1}, {"max_tokens": 0}, {"stop": 5}, {"messages": []}, {"top_p": "x"}]:
        body = {"model": "model", "messages": [{"role": "user", "content": "hi"}], **bad}
        status, err = post(url, json.dumps(body).encode())
        assert status == 400 and err["error"]["param"] == next(iter(bad)), (bad, err)
    r = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1


def test_the_api_key_is_required_when_set(server):
    url, _, _ = server
    for key in [None, "wrong"]:
        status, body = post(url, b'{"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}', key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert post(url, b'{"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}')[0] == 200


def test_a_client_that_leaves_mid_stream_frees_the_worker(server, monkeypatch):
    """Each long job is slowed to 50 ms a token (the tiny model would otherwise reach the end of its context before
    a disconnect is seen on a busy machine): both are cancelled, not answered to the end."""
    import mlxtune.inference as inference

    real = inference.stream

    def slow(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            time.sleep(0.05)
            yield chunk

    monkeypatch.setattr(inference, "stream", slow)
    url, engine, _ = server
    c = client(url)
    before = dict(engine.counts)
    long = dict(model="alpha", messages=[{"role": "user", "content": PROMPT}], max_tokens=2000, temperature=1.0, seed=1)
    stream = c.chat.completions.create(stream=True, **long)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    queued = c.chat.completions.create(stream=True, **long)  # queued behind the first; leaves before its turn
    queued.close()
    start = time.monotonic()
    r = c.chat.completions.create(model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
    assert r.choices[0].message.content is not None
    deadline = time.monotonic() + 10
    while engine.counts["cancelled"] < before["cancelled"] + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.counts["cancelled"] == before["cancelled"] + 2, engine.counts
    assert time.monotonic() - start < 10


def test_stop_text_holds_back_what_may_start_a_stop_string():
    s = StopText(["END", "xyz"])
    assert s.feed("abc E") == ("abc ", False)
    assert s.feed("N") == ("", False)
    assert s.feed("X") == ("ENX", False)
    assert s.feed("..xy") == ("..", False)
    assert s.feed("zzz") == ("", True)
    assert StopText([]).feed("E") == ("E", False)


def test_the_serve_command_prints_its_address_models_and_backend(tiny_model, runs):
    env = {**os.environ, "MLXTUNE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "mlxtune", "serve", "--model", str(tiny_model), "-a", str(runs[0]), "--port", "0", "--backend", "numpy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("mlxtune serve: http://127.0.0.1:") and "models: model (base), alpha" in line and "backend: numpy" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "API key required" in line
        url = line.split()[2]
        assert [m.id for m in client(url).models.list()] == ["model", "alpha"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serving_two_adapters_of_one_name_is_refused(tiny_model, runs, tmp_path):
    from mlxtune.errors import UsageError

    other = tmp_path / "alpha"
    other.mkdir()
    for f in runs[0].iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UsageError, match="two adapters are named 'alpha'"):
        load_switchable(str(tiny_model), [runs[0], other], backend="numpy")


def test_switching_adapters_gives_the_logits_of_loading_each_alone(tiny_model, runs, backend):
    """load_adapter_set: the base loaded once; each selection's logits equal a model loaded with that adapter alone, bit for bit."""
    served = load_switchable(str(tiny_model), runs, backend=backend)
    ids = [1, 5, 9, 3, 7, 2]

    def logits(model):
        if backend == "numpy":
            return model.forward(np.array([ids], dtype=np.int32))
        import mlx.core as mx

        return np.array(model(mx.array([ids])))

    alone = {name: logits(load(str(tiny_model), adapter, backend=backend).model) for name, adapter in [(None, None), ("alpha", runs[0]), ("beta", runs[1])]}
    assert not np.array_equal(alone[None], alone["alpha"]) and not np.array_equal(alone["alpha"], alone["beta"])
    for name in ["alpha", "beta", None, "beta", "alpha", None]:
        served.select(name)
        assert np.array_equal(logits(served.loaded.model), alone[name]), name


# ---------------------------------------------------------------- review fixes (issue 16): limits, client errors, cross-site, cancel, worker


def send(url: str, path: str, body: bytes = b"", headers: dict | None = None, method: str = "POST", chunked: bool = False) -> tuple[int, dict]:
    """(status, JSON body) of one request sent with http.client, headers as given (a Host header among them)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
        if chunked:
            conn.request(method, parts.path + path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]), headers=headers, encode_chunked=True)
        else:
            conn.request(method, parts.path + path, body=body if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


def test_oversized_bodies_get_413_and_a_full_queue_429(server):
    from mlxtune.serving.engine import MAX_QUEUED
    from mlxtune.serving.schema import MAX_BODY, Request, RequestError

    url, _, _ = server
    big = b'{"model": "model", "messages": [{"role": "user", "content": "' + b"x" * MAX_BODY + b'"}]}'
    for chunked in [False, True]:  # by Content-Length; counted as it streams in
        status, body = send(url, "/chat/completions", big, JSON, chunked=chunked)
        assert status == 413 and body["error"]["code"] == "request_too_large", (chunked, body)
    idle = Engine(lambda: None)  # not started: what it is given stays queued
    for _ in range(MAX_QUEUED):
        idle.submit(Request(model="model", prompt="hi"), None, lambda item: None)
    with pytest.raises(RequestError) as e:
        idle.submit(Request(model="model", prompt="hi"), None, lambda item: None)
    assert e.value.status == 429 and e.value.body()["error"]["type"] == "rate_limit_error"


def test_client_errors_are_400s_naming_the_field_and_internal_errors_hide_their_text(server, monkeypatch):
    url, engine, _ = server
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="model", prompt="", max_tokens=2)
    assert e.value.body["param"] == "prompt"
    from mlxtune.data.rendering import hf_tokenizer

    hf = hf_tokenizer(engine.served.loaded.tokenizer)
    monkeypatch.setattr(hf, "chat_template", "{% if messages[0]['role'] == 'system' %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{{ messages[0]['content'] }}")
    with pytest.raises(openai.BadRequestError) as e:  # as Mistral's template refuses a system turn
        c.chat.completions.create(model="model", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.body["param"] == "messages" and "Only user and assistant roles" in e.value.body["message"]
    monkeypatch.setattr(hf, "chat_template", None)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.body["param"] == "messages" and "/v1/completions" in e.value.body["message"]
    monkeypatch.undo()

    def broken(adapter):
        raise RuntimeError("secret /home/path detail")

    monkeypatch.setattr(engine.served, "select", broken)
    with pytest.raises(openai.InternalServerError) as e:
        c.completions.create(model="model", prompt="hi", max_tokens=2)
    assert e.value.body["message"] == "Internal error, see the server log." and "secret" not in json.dumps(e.value.body)
    monkeypatch.undo()
    assert c.completions.create(model="model", prompt="hi", max_tokens=2).choices[0].text is not None


def test_cross_site_requests_are_refused(server, tiny_model):
    url, engine, _ = server
    chat = json.dumps({"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    for media in [None, "text/plain", "application/x-www-form-urlencoded"]:  # what a page may POST without a preflight
        status, body = send(url, "/chat/completions", chat, {"Content-Type": media} if media else {})
        assert status == 415 and body["error"]["code"] == "unsupported_media_type", (media, body)
    assert send(url, "/chat/completions", chat, {"Content-Type": "application/json; charset=utf-8"})[0] == 200
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example:80"]:  # DNS rebinding
        status, body = send(url, "/models", headers={"Host": host}, method="GET")
        assert status == 403 and body["error"]["code"] == "host_not_allowed", host
        assert send(url, "/chat/completions", chat, {"Host": host, **JSON})[0] == 403
    for host in ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]", "[::1]:8080", "LOCALHOST"]:
        assert send(url, "/models", headers={"Host": host}, method="GET")[0] == 200, host
    bg = Background(create_app(engine, KEY, loopback=False), bind("127.0.0.1", 0))  # served beyond loopback: any Host
    try:
        assert send(bg.url, "/models", headers={"Host": "my-box.lan:8080"}, method="GET")[0] == 200
    finally:
        bg.stop()


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_stream_left_before_its_body_starts_is_cancelled(server, spec):
    """The client goes between the first token and the first byte of the body: StreamingResponse never runs the generator
    (ASGI 2.3: its disconnect watch ends the response; 2.4, as uvicorn: sending the response's start fails)."""
    import asyncio

    url, engine, _ = server
    app = create_app(engine, KEY)
    before = engine.counts["cancelled"]
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2000, "temperature": 1.0, "seed": 2, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    calls = []

    async def receive():
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        if len(calls) == 2:  # the route's own watch, until the stream begins
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}  # StreamingResponse's watch: gone at once

    async def send_(message):
        if spec == "2.4":
            raise OSError("the client has gone")
        await asyncio.sleep(0.5)  # the start of the response is slow to leave

    try:
        asyncio.run(app(scope, receive, send_))
    except Exception:  # 2.4: the disconnect is raised to the server
        pass
    deadline = time.monotonic() + 10
    while engine.counts["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.counts["cancelled"] == before + 1, engine.counts


class _Fatal(BaseException):
    """What no ``except Exception`` catches (as KeyboardInterrupt, SystemExit, GeneratorExit)."""


def test_the_worker_survives_a_base_exception_and_answers_503_when_it_stops(server, monkeypatch):
    from mlxtune.serving.schema import Request, RequestError

    url, engine, _ = server
    c = client(url).with_options(timeout=15)
    served_select = engine.served.select
    raised = []

    def once(adapter):
        if not raised:
            raised.append(adapter)
            raise _Fatal("in one job")
        return served_select(adapter)

    monkeypatch.setattr(engine.served, "select", once)
    with pytest.raises(openai.InternalServerError):
        c.completions.create(model="model", prompt="hi", max_tokens=2)
    assert c.completions.create(model="model", prompt="hi", max_tokens=2).choices[0].text is not None  # the worker lives
    monkeypatch.undo()

    other = Engine(lambda: engine.served)
    got = threading.Event()
    items = []

    def broken(item):  # delivering itself fails: the worker's loop cannot go on
        raise _Fatal("deliver")

    other.submit(Request(model="model", prompt="hi", max_tokens=2), None, broken)
    other.submit(Request(model="model", prompt="hi", max_tokens=2), None, lambda item: (items.append(item), got.set()))
    other.start()
    assert got.wait(10), "a job queued behind a fatal error was never answered"
    assert items[0][0] == "error" and items[0][1].status == 503
    with pytest.raises(RequestError) as e:
        other.submit(Request(model="model", prompt="hi"), None, lambda item: None)
    assert e.value.status == 503
    other.close()


def test_serve_options_check_the_port_and_say_where_keys_and_models_come_from():
    r = CliRunner().invoke(cli, ["serve", "--port", "70000"])
    assert r.exit_code == 2 and "70000" in r.output and "0<=x<=65535" in r.output, r.output
    text = " ".join(CliRunner().invoke(cli, ["serve", "--help"]).output.split())
    assert "ollama:NAME[:TAG]" in text and "MLXTUNE_API_KEY" in text and "ps" in text
    assert "ollama:NAME[:TAG]" in " ".join(CliRunner().invoke(cli, ["chat", "--help"]).output.split())


def test_a_numpy_switch_that_fails_part_way_leaves_the_base(tiny_model, runs, monkeypatch):
    """An adapter merge that fails part-way (out of memory) undoes the layers it merged: the model is the base
    again, and selecting the adapter once more merges it whole."""
    from mlxtune.backends.numpy import ops, switch

    served = load_switchable(str(tiny_model), runs, backend="numpy")
    ids = np.array([[1, 5, 9, 3, 7, 2]], dtype=np.int32)
    base = served.loaded.model.forward(ids)
    served.select("alpha")
    alpha = served.loaded.model.forward(ids)
    served.select(None)
    calls, delta = [], ops.lora_delta

    def failing(lora):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("out of memory")
        return delta(lora)

    monkeypatch.setattr(switch.ops, "lora_delta", failing)
    with pytest.raises(MemoryError):
        served.select("alpha")
    assert np.array_equal(served.loaded.model.forward(ids), base)
    monkeypatch.setattr(switch.ops, "lora_delta", delta)
    served.select("alpha")
    assert np.array_equal(served.loaded.model.forward(ids), alpha)
