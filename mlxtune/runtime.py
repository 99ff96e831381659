"""Where mlxtune's behaviour depends on the platform, the decision is made here.

Seven things differ between a Mac and a Linux box, and each is decided by one
small pure function that the tests call with every platform:

* ``choose_blas``: which BLAS library to load before ``mlx`` (Linux ``mlx[cpu]``
  wheels link the reference BLAS, ~40x slower than OpenBLAS for float32 matmul;
  on macOS mlx uses Accelerate and nothing must be loaded);
* ``choose_compute``: which dtype to train and generate in and whether quantized
  weights are expanded to float32 (mlx's CPU backend runs float16/bfloat16 and
  quantized matmuls at ~2-4 GFLOP/s against ~150+ for float32 with a good BLAS;
  a Metal GPU is fast at both and memory is the scarcer resource there);
* ``choose_expanded_dtype``: which dtype GGUF block types that MLX cannot hold
  quantized (K-quants, Q5_0/Q5_1, IQ4) are expanded to (float32 on a CPU, exact;
  float16 on a GPU, where float32 would double the model's memory);
* ``peak_memory_bytes``: what "peak memory" means (Metal's allocator on a GPU,
  the process's peak resident set elsewhere, read where it is not inherited:
  ``choose_peak_rss``);
* ``choose_allocator``: how glibc's malloc should treat the numpy backend's
  large, short-lived arrays (so that a training step does not fault the
  pages of its arrays in afresh each time);
* ``choose_blas_threads``: how many BLAS threads each process of a
  distributed run gets when several share a machine;
* ``choose_available_memory``: how much memory a run may plan to use
  (``mlxtune.training.plan`` compares its estimate with it); ``cgroup_memory_files``
  says which of this process's cgroup files hold its limit and usage.

This module must not import mlx at module level: ``preload_blas`` has to run
before mlx is first imported, which ``mlxtune/__init__.py`` guarantees by
calling ``prepare_process`` (the package's one import-time effect).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# Libraries that export the unprefixed CBLAS symbols (cblas_sgemm, ...) that
# libmlx imports. Most specific first. Wheels that bundle a BLAS with prefixed
# symbols (numpy's scipy_openblas) cannot serve here.
_BLAS_SONAMES = ("libopenblas.so.0", "libopenblas.so", "libmkl_rt.so.2", "libmkl_rt.so", "libblis.so.4")
_BLAS_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/OpenBLAS/lib",
)

BLAS_HINT = (
    "install OpenBLAS (Debian/Ubuntu: 'apt-get install libopenblas0'; Fedora: "
    "'dnf install openblas') or point MLXTUNE_BLAS at a libopenblas.so"
)


@dataclass(frozen=True)
class BlasChoice:
    """What to load before mlx, and how to describe the result to the user."""

    path: str | None  # library to dlopen with RTLD_GLOBAL, or None
    name: str  # shown to the user: "Accelerate", "OpenBLAS (/usr/lib/...)", ...
    optimized: bool  # False only when mlx is left with a reference BLAS


def choose_blas(system: str, env_override: str | None, found: list[str]) -> BlasChoice:
    """Decide which BLAS mlx will use.

    ``system`` is ``platform.system()``; ``env_override`` the value of
    ``MLXTUNE_BLAS`` (a path, or ``"none"`` to load nothing); ``found`` the
    candidate libraries present on this machine, best first.
    """
    if system == "Darwin":
        # mlx links Apple's Accelerate; loading another BLAS would only add risk.
        return BlasChoice(None, "Accelerate", True)
    if env_override:
        if env_override.lower() == "none":
            return BlasChoice(None, "mlx's bundled reference BLAS (MLXTUNE_BLAS=none)", False)
        return BlasChoice(env_override, _describe(env_override), True)
    if found:
        return BlasChoice(found[0], _describe(found[0]), True)
    return BlasChoice(None, "mlx's bundled reference BLAS (slow)", False)


def _describe(path: str) -> str:
    base = Path(path).name.lower()
    kind = "OpenBLAS" if "openblas" in base else "MKL" if "mkl" in base else "BLIS" if "blis" in base else "BLAS"
    return f"{kind} ({path})"


def find_blas_libraries() -> list[str]:
    """Optimized BLAS libraries present on this machine, best first."""
    found: list[str] = []
    for soname in _BLAS_SONAMES:
        for d in _BLAS_DIRS:
            p = Path(d) / soname
            if p.exists() and str(p) not in found:
                found.append(str(p))
    lib = ctypes.util.find_library("openblas")
    if lib:
        # find_library returns a soname; dlopen resolves it through ld.so.cache.
        found.append(lib)
    return found


_blas_state: dict = {}


def preload_blas() -> BlasChoice:
    """Load the chosen BLAS with RTLD_GLOBAL so that libmlx binds to it.

    Idempotent. Must run before ``import mlx``; if mlx was imported first we
    still load the library (lazy symbol binding usually picks it up) but can no
    longer promise it, and say so in the returned description.
    """
    if "choice" in _blas_state:
        return _blas_state["choice"]
    choice = choose_blas(platform.system(), os.environ.get("MLXTUNE_BLAS"), find_blas_libraries() if platform.system() == "Linux" else [])
    if choice.path is not None:
        late = "mlx.core" in sys.modules
        try:
            ctypes.CDLL(choice.path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            choice = BlasChoice(None, f"mlx's bundled reference BLAS (slow; could not load {choice.path}: {e})", False)
        else:
            if late:
                choice = BlasChoice(choice.path, choice.name + ", loaded after mlx", True)
    _blas_state["choice"] = choice
    return choice


def local_processes(env: dict[str, str], read=lambda p: Path(p).read_text()) -> int:
    """How many processes of a distributed run share this machine (1 when not launched as several).

    mpirun says it (OMPI_COMM_WORLD_LOCAL_SIZE); mlx.launch's ring backend
    gives each rank a hostfile listing every rank's address, so the ranks at
    this rank's address are the local ones.
    """
    import json

    try:
        if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
            return max(1, int(env["OMPI_COMM_WORLD_LOCAL_SIZE"]))
        if "MLX_RANK" in env and "MLX_HOSTFILE" in env:
            hosts = json.loads(read(env["MLX_HOSTFILE"]))
            address = [entry[0].rsplit(":", 1)[0] if entry else None for entry in hosts]
            return max(1, address.count(address[int(env["MLX_RANK"])]))
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        pass
    return 1


def choose_blas_threads(system: str, cpus: int, local: int, env: dict[str, str]) -> dict[str, str]:
    """BLAS thread counts for processes sharing a machine: its cores split between them.

    Every BLAS starts one thread per core; two training processes on two
    cores would then run four busy threads and wait on each other (measured
    on SmolLM2, 2 processes, 2 cores: 17 trained tokens/s, 73 with one thread
    each). Only what the user has not set; nothing for a process alone.
    """
    if local <= 1:
        return {}
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") + (("VECLIB_MAXIMUM_THREADS",) if system == "Darwin" else ())
    return {k: str(max(1, cpus // local)) for k in names if k not in env}


def share_cores() -> dict[str, str]:
    """Apply ``choose_blas_threads`` to this process, before numpy or mlx load their BLAS."""
    chosen = choose_blas_threads(platform.system(), os.cpu_count() or 1, local_processes(dict(os.environ)), dict(os.environ))
    os.environ.update(chosen)
    return chosen


def prepare_process() -> BlasChoice:
    """What importing ``mlxtune`` does, and all it does: the process set up before numpy or mlx load their BLAS.

    Two effects, each idempotent, both too late once a BLAS has started: the
    cores are split between the processes of a distributed run that share
    this machine (``share_cores``: BLAS thread counts the user has not set, in
    ``os.environ``), then the BLAS mlx should bind to is loaded (``preload_blas``).
    ``mlxtune/__init__.py`` calls it, since it is the first module of ours any
    caller imports; nothing else of ours acts at import time.
    """
    share_cores()  # before numpy or mlx start their BLAS threads
    return preload_blas()


@dataclass(frozen=True)
class ComputeChoice:
    """How the mlx backend computes on this device."""

    device: str  # "gpu" or "cpu"
    dtype: str | None  # compute dtype for float weights; None keeps the stored dtype
    expand_quantized: bool  # dequantize quantized weights to float32 for matmuls
    reason: str  # one line for the user


def choose_compute(device: str, requested_dtype: str | None = None) -> ComputeChoice:
    """Pick the compute dtype and how to treat quantized weights.

    ``device`` is ``"gpu"`` (Metal) or ``"cpu"``. A dtype the user asked for
    always wins; otherwise a GPU keeps the checkpoint's dtype and quantized
    weights (memory is what a laptop GPU lacks), and a CPU computes in float32
    with quantized weights expanded, because mlx's CPU kernels for half
    precision and quantized matmul are 30-60x slower than float32 sgemm.
    """
    if device == "gpu":
        return ComputeChoice("gpu", requested_dtype, False, "Metal GPU, stored dtype" if requested_dtype is None else f"Metal GPU, {requested_dtype}")
    dtype = requested_dtype or "float32"
    return ComputeChoice("cpu", dtype, dtype == "float32", f"CPU, {dtype}" + (", quantized weights expanded to float32" if dtype == "float32" else ""))


def choose_expanded_dtype(device: str) -> str:
    """The dtype a GGUF's K-quant, Q5_0/Q5_1 and IQ4 tensors are stored in once expanded (MLX has no such blocks).

    On a CPU, float32: the expansion is exact in float32, and float32 is what
    mlx's CPU path and the numpy backend compute in (``choose_compute``). On a
    Metal GPU, float16: the dtype the file's block scales are in and that the GPU
    computes a quantized model in; float32 would double the model's memory for
    precision its computation does not use.
    """
    return "float16" if device == "gpu" else "float32"


def current_device() -> str:
    import mlx.core as mx

    return "gpu" if mx.metal.is_available() else "cpu"


def peak_memory_bytes(device: str) -> int:
    """Peak memory of this process as the user should read it.

    On a GPU, mlx's own allocator peak (unified memory used by arrays); on a
    CPU, the process's peak resident set, which includes the Python heap and the
    BLAS buffers that mlx's counter does not see.
    """
    if device == "gpu":
        import mlx.core as mx

        return int(mx.get_peak_memory())
    import resource

    status = _read("/proc/self/status") if sys.platform.startswith("linux") else None
    return choose_peak_rss(sys.platform, status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def choose_peak_rss(system: str, proc_status: str | None, ru_maxrss: int) -> int:
    """The peak resident set of this process, in bytes.

    On Linux, VmHWM of /proc/self/status: ru_maxrss carries over the high-water
    mark of the process that started us (vfork + exec), so a run started by a
    4 GB test runner reported 4.4 GB for a 1.4 GB run. Elsewhere ru_maxrss,
    in kilobytes on Linux and in bytes on macOS.
    """
    if proc_status:
        for line in proc_status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(ru_maxrss if system == "darwin" else ru_maxrss * 1024)


@dataclass(frozen=True)
class MallocSettings:
    """glibc ``mallopt`` parameters (see mallopt(3)); bytes."""

    mmap_threshold: int  # M_MMAP_THRESHOLD: larger blocks get their own mmap
    trim_threshold: int  # M_TRIM_THRESHOLD: free memory kept at the top of the heap before returning it
    top_pad: int  # M_TOP_PAD: extra bytes asked of the kernel each time the heap grows


# mallopt(3) parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def choose_allocator(system: str, libc: str, env: dict[str, str] | None = None) -> MallocSettings | None:
    """malloc settings for numpy training on this platform, or None to leave the allocator alone.

    A numpy training step allocates and frees the same few hundred arrays of
    1-30 MB every step. glibc serves such blocks with a fresh ``mmap`` each,
    or, once its adaptive threshold has grown past them, from a heap whose
    top it hands back to the kernel whenever a little is free there; either
    way each step faults its pages in again. Serving blocks up to 32 MB
    (glibc's maximum) from the heap and keeping up to 1 GB of freed heap lets
    every step reuse the pages of the one before.

    ``system`` is ``platform.system()``, ``libc`` the first item of
    ``platform.libc_ver()`` ("glibc", or "" for musl and others), ``env`` the
    environment: a user who set glibc's own ``MALLOC_*`` variables keeps
    them. macOS, Windows and musl have other allocators: nothing to do.
    """
    if system != "Linux" or libc != "glibc":
        return None
    if env and any(name in env for name in _MALLOC_ENV):
        return None
    return MallocSettings(mmap_threshold=32 * 2**20, trim_threshold=2**30, top_pad=64 * 2**20)


_allocator_state: dict = {}


def tune_allocator() -> MallocSettings | None:
    """Apply ``choose_allocator``'s settings to this process with ``mallopt``; idempotent.

    Returns the settings in effect, or None where nothing was changed.
    """
    if "settings" in _allocator_state:
        return _allocator_state["settings"]
    settings = choose_allocator(platform.system(), platform.libc_ver()[0], dict(os.environ))
    if settings is not None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            params = ((_M_MMAP_THRESHOLD, settings.mmap_threshold), (_M_TRIM_THRESHOLD, settings.trim_threshold), (_M_TOP_PAD, settings.top_pad))
            ok = all(mallopt(param, value) == 1 for param, value in params)
        except (OSError, AttributeError):
            ok = False
        if not ok:
            settings = None
    _allocator_state["settings"] = settings
    return settings


def describe() -> str:
    """One line for the user: device, dtype policy and BLAS."""
    device = current_device()
    compute = choose_compute(device)
    blas = preload_blas()
    text = compute.reason
    if device == "cpu":
        text += f"; BLAS: {blas.name}"
        if not blas.optimized:
            text += f" - training will be very slow; {BLAS_HINT}"
    return text


@dataclass(frozen=True)
class MemoryLimit:
    """Memory a run may use on this machine, and where the figure comes from (for the user)."""

    bytes: int
    source: str


def choose_available_memory(
    system: str,
    meminfo: str | None = None,
    cgroup_limit: str | None = None,
    cgroup_usage: str | None = None,
    memsize: int | None = None,
    metal_working_set: int | None = None,
) -> MemoryLimit | None:
    """How much memory a training run started now may use; None where unknown.

    ``system`` is ``platform.system()``. Linux: ``meminfo`` is the text of
    /proc/meminfo, whose MemAvailable is free memory plus what the kernel can
    reclaim at once (page cache); ``cgroup_limit`` and ``cgroup_usage`` the
    text of this process's cgroup's limit and current usage (v2 memory.max and
    memory.current, v1 memory.limit_in_bytes and memory.usage_in_bytes; see
    ``cgroup_memory_files``). What is left under the limit wins when lower:
    past the limit the kernel kills the process even with free memory on the
    host. "max" (v2) or a figure near 2**63 (v1) is no limit. macOS:
    ``memsize`` is sysctl hw.memsize, the total (the system compresses and
    swaps rather than report what is free); on Apple silicon
    ``metal_working_set`` is mlx's recommended working set, lower than the
    total because the GPU shares that unified memory.
    """
    if system == "Linux":
        available = None
        for line in (meminfo or "").splitlines():
            if line.startswith("MemAvailable:"):
                available = MemoryLimit(int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo")
        limit, usage = (cgroup_limit or "").strip(), (cgroup_usage or "").strip()
        if limit.isdigit() and int(limit) < 2**60:
            left = max(int(limit) - (int(usage) if usage.isdigit() else 0), 0)
            if available is None or left < available.bytes:
                used = f", {int(usage) / 1e9:.2f} GB in use" if usage.isdigit() else ""
                return MemoryLimit(left, f"what is left of the container's memory limit (cgroup: {int(limit) / 1e9:.2f} GB{used})")
        return available
    if system == "Darwin" and memsize:
        if metal_working_set and metal_working_set < memsize:
            return MemoryLimit(int(metal_working_set), "Metal's recommended working set (unified memory)")
        return MemoryLimit(int(memsize), "total memory (hw.memsize)")
    return None


CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_memory_files(proc_self_cgroup: str | None, root: str = CGROUP_ROOT) -> list[tuple[str, str]]:
    """Where this process's cgroup memory limit and usage are: (limit file, usage file) pairs, best first.

    ``proc_self_cgroup`` is the text of /proc/self/cgroup. A v1 memory
    controller (a line ``N:...,memory,...:/path``; it wins on a hybrid system,
    whose v2 hierarchy has no memory controller) names
    ROOT/memory/<path>/memory.limit_in_bytes and memory.usage_in_bytes; else
    cgroup v2 (``0::/path``) ROOT/<path>/memory.max and memory.current. Each
    is followed by the same files at the root of the mount: inside a container
    the process's own cgroup is usually mounted there, and the path named in
    /proc/self/cgroup does not exist under it.
    """
    v1 = v2 = None
    for line in (proc_self_cgroup or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and controllers == "":
            v2 = path

    def pairs(base: str, path: str | None, limit: str, usage: str) -> list[tuple[str, str]]:
        rel = (path or "").strip("/")
        dirs = [f"{base}/{rel}"] if rel and ".." not in rel.split("/") else []
        return [(f"{d}/{limit}", f"{d}/{usage}") for d in dirs + [base]]

    v1_files = pairs(f"{root}/memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes")
    v2_files = pairs(root, v2, "memory.max", "memory.current")
    if v1 is not None:
        return v1_files
    if v2 is not None:
        return v2_files
    return v2_files + v1_files  # /proc/self/cgroup unreadable: the root files of either version


def available_memory() -> MemoryLimit | None:
    """``choose_available_memory`` with the facts of this machine."""
    system = platform.system()
    if system == "Linux":
        limit = usage = None
        for limit_file, usage_file in cgroup_memory_files(_read("/proc/self/cgroup")):
            limit = _read(limit_file)
            if limit is not None:
                usage = _read(usage_file)
                break
        return choose_available_memory(system, meminfo=_read("/proc/meminfo"), cgroup_limit=limit, cgroup_usage=usage)
    if system == "Darwin":
        return choose_available_memory(system, memsize=_sysctl_memsize(), metal_working_set=_metal_working_set() if platform.machine() == "arm64" else None)
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _sysctl_memsize() -> int | None:
    try:
        value, size = ctypes.c_uint64(0), ctypes.c_size_t(8)
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if libc.sysctlbyname(b"hw.memsize", ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) == 0:
            return int(value.value)
    except (OSError, AttributeError, TypeError):
        pass
    return None


def _metal_working_set() -> int | None:
    try:
        import mlx.core as mx

        if not mx.metal.is_available():
            return None
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        return int(info["max_recommended_working_set_size"])
    except (ImportError, AttributeError, KeyError, TypeError, ValueError, RuntimeError):
        return None
