"""Importing mlxtune has one effect, runtime.prepare_process(), and loads neither numpy nor mlx."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, os, sys
import mlxtune
from mlxtune import runtime
print(json.dumps({
    "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    "blas_loaded": "choice" in runtime._blas_state,
    "again": runtime.prepare_process() is runtime.preload_blas(),
    "heavy": sorted(m for m in ("numpy", "mlx", "mlx.core") if m in sys.modules),
}))
"""


def test_importing_mlxtune_prepares_the_process_and_nothing_more():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env |= {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen == {"threads": str(max(1, (os.cpu_count() or 1) // 2)), "blas_loaded": True, "again": True, "heavy": []}


def test_the_package_calls_the_one_function_that_says_so():
    init = (ROOT / "mlxtune" / "__init__.py").read_text()
    assert [line for line in init.splitlines() if line.startswith("_runtime.")] == ["_runtime.prepare_process()"]
