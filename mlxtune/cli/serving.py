"""``mlxtune serve``: the OpenAI-compatible server (``mlxtune.serving``), its options and its startup line."""

from __future__ import annotations

import os

import click

from . import BACKEND_HELP, BACKENDS, CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Base model: Hub id, directory, .gguf or ollama:NAME[:TAG]. [default: the adapters' base, else SmolLM2-135M-Instruct]")
@click.option("-a", "--adapter", "adapters", multiple=True, type=click.Path(), help="Run directory (or PEFT adapter) to serve beside the base, under its directory's name; repeat for more.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface; set an --api-key then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--api-key", envvar="MLXTUNE_API_KEY", help="Require 'Authorization: Bearer KEY' on every request. Prefer setting MLXTUNE_API_KEY: an option is visible to other users in ps.")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
def serve(model, adapters, host, port, api_key, backend, offline) -> None:
    """Serve a model and its adapters behind an OpenAI-compatible API.

    GET /v1/models lists the base and each adapter; POST /v1/chat/completions and
    /v1/completions answer (streamed or not), the request's "model" picking the base or an
    adapter. Requests are answered one at a time, in order. Ctrl-C stops the server.

    \b
    Examples:
      mlxtune serve --adapter runs/notes
      mlxtune serve --model HuggingFaceTB/SmolLM2-135M-Instruct -a runs/notes -a runs/style --port 8000
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "notes", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from ..errors import UsageError
    from ..serving import MISSING_EXTRA, extra_installed

    if not extra_installed():
        raise UsageError(MISSING_EXTRA)
    from ..backends import get
    from ..inference import load_switchable
    from ..serving.app import bind, create_app, run
    from ..serving.engine import Engine

    sock = bind(host, port)  # before loading: a busy port fails at once
    engine = Engine(lambda: load_switchable(model, list(adapters), offline=offline, backend=backend))
    try:
        engine.start()
        served = engine.served
        for note in served.loaded.notes:
            click.echo(f"note: {note}", err=True)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        names = ", ".join([f"{served.base_name} (base)", *served.adapters])
        click.echo(f"mlxtune serve: http://{shown}:{bound_port}/v1 · models: {names} · backend: {get(served.loaded.backend).describe()}"
                   + (" · API key required" if api_key else ""), err=False)
        if not _loopback(bound_host) and not api_key:
            click.echo("warning: listening beyond this machine without an --api-key: anyone who can reach it can use it", err=True)
        run(create_app(engine, api_key or None, loopback=_loopback(bound_host)), sock)
    finally:
        sock.close()
        engine.close()


def _loopback(host: str) -> bool:
    """Whether ``host`` (a bound address) is this machine only."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
