"""The backend contract (issue 14): every backend implements ``backends.base.Backend`` whole, ``backends.get``
is the one dispatch on a backend's name, and choosing a backend imports no mlx."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from mlxtune.backends import base, get
from mlxtune.errors import UsageError

METHODS = [n for n, v in vars(base.Backend).items() if callable(v) and not n.startswith("_")]


@pytest.mark.parametrize("name", ["mlx", "numpy"])
def test_each_backend_implements_the_whole_protocol_with_its_signatures(name):
    impl = get(name)
    assert impl.name == name and isinstance(impl.can_requantize, bool) and isinstance(impl.names_any_layers, bool)
    assert {"load_inference", "stream", "summed_loss", "fuse", "convert", "device", "describe"} <= set(METHODS)
    for method in METHODS:
        want = list(inspect.signature(getattr(base.Backend, method)).parameters)
        assert list(inspect.signature(getattr(type(impl), method)).parameters) == want, method


def test_an_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="backend must be one of auto, mlx, numpy"):
        get("torch")


def test_the_dispatch_and_the_numpy_backend_import_no_mlx():
    code = "import sys; from mlxtune.backends import get; b = get('numpy'); get('mlx'); b.device(); print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
