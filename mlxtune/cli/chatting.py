"""``mlxtune chat``: reads the user's lines, prints the streamed answers, and decides what Ctrl-C does.

At a terminal: a prompt, a banner and the commands; Ctrl-C during an answer stops
that answer (``mlxtune.chat`` keeps what it said so far) and returns to the
prompt; Ctrl-C or Ctrl-D at the prompt ends the session. With standard input not
a terminal: one user turn per line, and on standard output nothing but the answers
(and what /settings and /help show), one per turn.
"""

from __future__ import annotations

import sys
from contextlib import closing

import click

from . import BACKEND_HELP, BACKENDS, CONTEXT
from ..errors import MlxtuneError

PROMPT = ">>> "


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Model: Hub id, directory, .gguf or ollama:NAME[:TAG]. [default: the adapter's base, else SmolLM2-135M-Instruct]")
@click.option("-a", "--adapter", type=click.Path(), help="Run directory with adapters to apply, or a PEFT LoRA adapter directory.")
@click.option("--system", help="System message, kept at the start of the conversation.")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Most tokens in each answer.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", type=int, help="Random seed for sampling (each answer is drawn with it).")
@click.option("--thinking/--no-thinking", default=None, help="Let the model think first (chat templates with enable_thinking: Qwen3, SmolLM3). [default: as the adapter's run was trained; off]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
def chat(model, adapter, system, max_tokens, temp, top_p, seed, thinking, backend, offline) -> None:
    """Chat with a model (and adapter): a conversation through its chat template, answers streamed.

    \b
    Commands: /reset forgets the conversation, /settings shows the model and
    sampling, /help, /quit (or Ctrl-D). Ctrl-C stops an answer (what it said so
    far stays in the conversation); at the prompt it ends the session. A
    conversation longer than the model's context drops its oldest turns.
    Piped input is one user turn per line; only the answers are printed:
      printf 'What is the capital of France?\\n' | mlxtune chat
    \b
    Examples:
      mlxtune chat --adapter runs/notes --system "You tidy up meeting notes."
      mlxtune chat --model fused --temp 0.7 --seed 1
    """
    from ..chat import ChatSession, Sampling
    from ..inference import load

    sampling = Sampling(max_tokens, temp, top_p, seed)
    sampling.check()  # before loading
    loaded = load(model, adapter, offline=offline, backend=backend, thinking=thinking)
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    session = ChatSession(loaded, sampling, system, model_name=model)
    if sys.stdin.isatty():
        _interactive(session)
    else:
        failure = _piped(session)
        if failure:
            sys.exit(failure)


def _interactive(session) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    s = session.settings()
    click.echo(f"Chatting with {s['model']}" + (f", adapter {s['adapter']}" if session.loaded.adapter else "") + f", on {session.loaded.backend}.")
    click.echo("/reset forgets, /settings, /help, /quit; Ctrl-C stops an answer, Ctrl-D ends.")
    while True:
        try:
            line = input(PROMPT)
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        try:
            if _turn(session, line, interactive=True) == "quit":
                return
        except KeyboardInterrupt:  # during a command (an answer handles its own): back to the prompt
            click.echo()


def _piped(session) -> int:
    """Every line of standard input as a turn; the exit code: that of the last failed turn, else 0."""
    failure = 0
    for line in sys.stdin:
        try:
            if _turn(session, line, interactive=False) == "quit":
                break
        except MlxtuneError as e:
            failure = e.exit_code
    return failure


def _turn(session, line: str, interactive: bool) -> str | None:
    """Carry out one line: a command or a user turn. Returns "quit" to end the session.

    Interactive, errors are told and the session goes on; piped, they are told and raised (for the exit code).
    """
    from ..chat import COMMANDS, user_text

    if not line.strip():
        return None
    try:
        command = session.command(line)
        if command is None:
            _answer(session, user_text(line), interactive)
            return None
    except MlxtuneError as e:
        click.echo(f"{e.label}: {e}", err=True)
        if interactive:
            return None
        raise
    if command.name == "/quit":
        return "quit"
    if command.name == "/reset":
        click.echo("(conversation forgotten)", err=not interactive)
    elif command.name == "/settings":
        width = max(map(len, command.settings))
        for name, value in command.settings.items():
            click.echo(f"{name:<{width}}  {value}")
    elif command.name == "/help":
        for name, what in COMMANDS.items():
            click.echo(f"{name:<10} {what}")
    return None


def _answer(session, text: str, interactive: bool) -> None:
    """Stream the answer to one user turn; at a terminal, Ctrl-C stops it and the session goes on."""
    try:
        ids, trim = session.prompt(text)
        if trim is not None and trim.first:
            click.echo(f"note: the conversation no longer fits the model's context ({trim.context} tokens): its oldest turns are dropped from now on", err=True)
        chunks = session.reply(text, ids)
        with closing(chunks):  # closing keeps the partial answer in the history
            for chunk in chunks:
                click.echo(chunk.text, nl=False)
    except KeyboardInterrupt:
        if not interactive:
            raise
        click.echo(" [stopped]", nl=False)
    click.echo()
