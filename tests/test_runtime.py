"""The platform decisions, checked for every platform (not just this machine)."""

from mlxtune import runtime


def test_mac_uses_accelerate_and_loads_nothing():
    choice = runtime.choose_blas("Darwin", env_override=None, found=["/usr/lib/libopenblas.so.0"])
    assert choice.path is None and choice.optimized and choice.name == "Accelerate"


def test_mac_ignores_blas_override():
    # Loading a second BLAS into a process that links Accelerate only adds risk.
    assert runtime.choose_blas("Darwin", "/opt/libopenblas.so", []).path is None


def test_linux_prefers_first_found_optimized_blas():
    choice = runtime.choose_blas("Linux", None, ["/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/libmkl_rt.so"])
    assert choice.path == "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
    assert choice.optimized and choice.name.startswith("OpenBLAS")


def test_linux_without_blas_says_reference_and_slow():
    choice = runtime.choose_blas("Linux", None, [])
    assert choice.path is None and not choice.optimized and "slow" in choice.name


def test_linux_env_override_path_and_none():
    assert runtime.choose_blas("Linux", "/x/libmkl_rt.so", ["/y/libopenblas.so.0"]).path == "/x/libmkl_rt.so"
    off = runtime.choose_blas("Linux", "none", ["/y/libopenblas.so.0"])
    assert off.path is None and not off.optimized


def test_gpu_keeps_stored_dtype_and_quantized_weights():
    c = runtime.choose_compute("gpu")
    assert c.device == "gpu" and c.dtype is None and not c.expand_quantized


def test_gpu_honours_requested_dtype():
    assert runtime.choose_compute("gpu", "float32").dtype == "float32"


def test_cpu_computes_float32_and_expands_quantized():
    c = runtime.choose_compute("cpu")
    assert c.dtype == "float32" and c.expand_quantized


def test_cpu_half_precision_on_request_keeps_quantized():
    c = runtime.choose_compute("cpu", "bfloat16")
    assert c.dtype == "bfloat16" and not c.expand_quantized


def test_gguf_blocks_expand_to_float32_on_a_cpu_and_float16_on_a_gpu():
    assert runtime.choose_expanded_dtype("cpu") == "float32"
    assert runtime.choose_expanded_dtype("gpu") == "float16"


def test_peak_memory_cpu_is_resident_set():
    assert runtime.peak_memory_bytes("cpu") > 10_000_000


def test_this_machine_blas_is_reported():
    import pytest

    pytest.importorskip("mlx.core")
    text = runtime.describe()
    assert "BLAS" in text or "GPU" in text


def test_backend_choice():
    import pytest

    from mlxtune.backends import choose_backend
    from mlxtune.errors import UsageError

    # a Mac's GPU: mlx; a CPU: numpy for the families it implements (faster there), mlx for the rest
    assert choose_backend("auto", mlx_ok=True, device="gpu", model_type="llama") == "mlx"
    assert choose_backend(None, mlx_ok=True, device="gpu", model_type="gemma3") == "mlx"
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="llama") == "numpy"
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="qwen2") == "numpy"
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="gemma3") == "numpy"  # since issue 15
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="phi3") == "numpy"  # since issue 15 too
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="granite") == "mlx"  # a family numpy does not implement
    assert choose_backend("auto", mlx_ok=False, device=None, model_type="llama") == "numpy"
    assert choose_backend("mlx", mlx_ok=True, device="cpu", model_type="llama") == "mlx"
    assert choose_backend("auto", mlx_ok=True, device="cpu", model_type="llama", mlx_only="DoRA") == "mlx"
    assert choose_backend("numpy", mlx_ok=True) == "numpy"
    with pytest.raises(UsageError, match="--backend numpy"):
        choose_backend("mlx", mlx_ok=False)
    with pytest.raises(UsageError):
        choose_backend("torch", mlx_ok=True)


def test_allocator_tuned_on_glibc_linux_only():
    settings = runtime.choose_allocator("Linux", "glibc", {})
    assert settings is not None
    assert settings.mmap_threshold == 32 * 2**20  # glibc's maximum: mallopt refuses more
    assert settings.trim_threshold >= 512 * 2**20 and settings.top_pad > 0
    assert settings.trim_threshold < 2**31  # mallopt takes a C int
    assert runtime.choose_allocator("Darwin", "", {}) is None  # macOS: its own malloc
    assert runtime.choose_allocator("Linux", "", {}) is None  # musl (Alpine) and other libcs
    assert runtime.choose_allocator("Windows", "", {}) is None


def test_allocator_leaves_users_malloc_settings_alone():
    assert runtime.choose_allocator("Linux", "glibc", {"MALLOC_MMAP_THRESHOLD_": "1000000"}) is None
    assert runtime.choose_allocator("Linux", "glibc", {"MALLOC_ARENA_MAX": "2"}) is None
    assert runtime.choose_allocator("Linux", "glibc", {"HOME": "/root"}) is not None


def test_tune_allocator_applies_once_in_a_subprocess():
    import platform
    import subprocess
    import sys

    code = "from mlxtune import runtime; a = runtime.tune_allocator(); b = runtime.tune_allocator(); print(a is b, a is not None)"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[0] == "True"
    assert out[1] == str(platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_local_processes_from_the_launchers_facts():
    from mlxtune.runtime import local_processes

    ring = '[["127.0.0.1:5000"], ["127.0.0.1:5001"], ["10.0.0.2:5000"]]'
    read = lambda path: ring  # noqa: E731
    assert local_processes({}) == 1
    assert local_processes({"MLX_RANK": "0", "MLX_HOSTFILE": "h"}, read) == 2
    assert local_processes({"MLX_RANK": "2", "MLX_HOSTFILE": "h"}, read) == 1  # the Mac across the desk
    assert local_processes({"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MLX_RANK": "0"}, read) == 4
    assert local_processes({"MLX_RANK": "0", "MLX_HOSTFILE": "h"}, lambda p: "not json") == 1
    assert local_processes({"MLX_RANK": "7", "MLX_HOSTFILE": "h"}, read) == 1


def test_blas_threads_split_the_cores_only_between_local_processes():
    from mlxtune.runtime import choose_blas_threads

    assert choose_blas_threads("Linux", 2, 1, {}) == {}
    assert choose_blas_threads("Linux", 2, 2, {}) == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    assert choose_blas_threads("Linux", 16, 3, {"OMP_NUM_THREADS": "2"}) == {"OPENBLAS_NUM_THREADS": "5"}  # the user's own setting stays
    assert choose_blas_threads("Darwin", 10, 2, {}) == {"OPENBLAS_NUM_THREADS": "5", "OMP_NUM_THREADS": "5", "VECLIB_MAXIMUM_THREADS": "5"}
    assert choose_blas_threads("Linux", 2, 4, {})["OPENBLAS_NUM_THREADS"] == "1"


def test_peak_rss_is_this_process_own():
    """Linux: VmHWM, not ru_maxrss, which a process started by a bigger one inherits from it."""
    import subprocess
    import sys

    from mlxtune.runtime import choose_peak_rss

    status = "Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  120000 kB\nVmRSS:\t 100000 kB\n"
    assert choose_peak_rss("linux", status, 4_000_000) == 120000 * 1024
    assert choose_peak_rss("linux", None, 4_000) == 4_000 * 1024  # no /proc: ru_maxrss in kilobytes
    assert choose_peak_rss("darwin", None, 5_000_000) == 5_000_000  # macOS: bytes
    if sys.platform.startswith("linux"):
        import numpy as np

        big = np.ones(50_000_000)  # 400 MB in this process, which the child must not report
        code = "from mlxtune.runtime import peak_memory_bytes; print(peak_memory_bytes('cpu'))"
        child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        assert child < 300e6 and big.sum() > 0


LOAD_RSS_CODE = """
import json, sys
from mlxtune.backends.numpy import model, trainer as numpy_trainer  # imported before the first reading, as is all the trainer imports
from mlxtune.training.config import TrainConfig

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")

before = rss()
trainer = numpy_trainer.NumpyTrainer(sys.argv[1], TrainConfig(backend="numpy", rank=8))
arrays = {id(w.base if w.base is not None else w): (w.base if w.base is not None else w).nbytes for w in trainer.model.weights.values()}
print(json.dumps({"growth": rss() - before, "weights": sum(arrays.values())}))
"""


def test_numpy_trainer_keeps_no_freed_file_tensors_resident(tmp_path):
    """Loading, q|k|v and gate|up are stacked and the file's tensors freed: those pages must go back to the kernel.

    With the step's allocator settings (blocks up to 32 MB served from the heap, 1 GB of free heap kept) in force
    during loading, they stayed resident as holes in the heap, about a quarter of the weights more for the whole run
    (Qwen3-0.6B: 3.15 GB after loading 2.38 GB of weights), which made loading the run's peak at batch 1.
    """
    import json
    import platform
    import subprocess
    import sys

    import pytest

    from tiny import make_tiny_model

    if platform.system() != "Linux":
        pytest.skip("reads /proc/self/statm")
    # 8 blocks of 1 MB q, k, v, o and 4 MB gate, up, down: 104 MB of float32 weights, in blocks the tuned heap would keep
    model = make_tiny_model(tmp_path / "m", hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, head_dim=64)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", LOAD_RSS_CODE, str(model)], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["weights"] > 100 * 2**20
    assert r["growth"] < 1.05 * r["weights"] + 8 * 2**20, r
