"""``mlxtune serve``: an OpenAI-compatible HTTP API over a base model and its adapters.

``schema.py`` checks request bodies, ``engine.py`` queues the requests to the
one worker thread that loads the model and generates (and picks the base or an
adapter per request), ``app.py`` holds the Starlette routes and runs uvicorn.
Starlette and uvicorn are the optional extra ``serve`` (``pip install 'mlxtune[serve]'``).
"""

MISSING_EXTRA = "serve needs Starlette and uvicorn: pip install 'mlxtune[serve]' (or: pip install starlette uvicorn)"


def extra_installed() -> bool:
    """Whether the ``serve`` extra (Starlette and uvicorn) can be imported here."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("starlette", "uvicorn"))
