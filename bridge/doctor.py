"""What this machine can do for StepX Bridge, and the fix for each thing that is missing.

Each check is a small function returning a :class:`Check`; :func:`run_checks` runs them all and
never raises (a check that crashes reports the crash as its detail). ``stepx doctor`` prints them.
Heavy modules (torch, moderngl) are imported inside their checks only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from bridge.protocol import CONTROL_PORT, DATA_PORT, DEFAULT_HOST, OSC_CONTROL_PORT, OSC_OUT_PORT


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` False comes with the ``fix``; ``required`` failures fail the command."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _version(module: str) -> str | None:
    """The module's version if it imports, else None (no import of a missing module's parents)."""
    if importlib.util.find_spec(module) is None:
        return None
    mod = importlib.import_module(module)
    return str(getattr(mod, "__version__", "installed"))


def check_python() -> Check:
    v = sys.version_info
    return Check("python", v >= (3, 10), f"Python {v.major}.{v.minor}.{v.micro} at {sys.executable}",
                 "install Python 3.10 or newer", required=True)


def check_torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", False, "torch is not installed",
                     "pip install torch (CPU: pip install torch --index-url https://download.pytorch.org/whl/cpu)",
                     required=True)
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else ("ROCm" if getattr(torch.version, "hip", None) else "CPU")
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps (Apple GPU)"
    else:
        device = "cpu only (the embedded shapes model runs here; full-size models want a GPU)"
    return Check("torch", True, f"torch {torch.__version__}, {build} build; device {device}", required=True)


def check_threads() -> Check:
    import torch

    from bridge.threads import default_threads, load_average, usable_cpus

    cores = usable_cpus()
    omp = os.environ.get("OMP_NUM_THREADS")
    n = torch.get_num_threads()
    load = load_average()
    cpu_model = default_threads(cores, load)
    detail = (f"torch uses {n} thread(s) of {cores} core(s)" + (f" (OMP_NUM_THREADS={omp})" if omp else "")
              + f"; a model on the CPU gets {cpu_model} now (load {'unknown' if load is None else f'{load:.1f}'};"
              " --threads N sets it)")
    return Check("threads", n <= cores, detail, f"set OMP_NUM_THREADS to at most {cores}")


def check_egl() -> Check:
    """A headless OpenGL context for ``stepx preview --out`` (and the window's own context)."""
    if importlib.util.find_spec("moderngl") is None:
        return Check("preview (EGL)", False, "moderngl is not installed", "pip install 'stepx-bridge[preview]'")
    import moderngl

    try:
        ctx = moderngl.create_context(standalone=True, backend="egl")  # type: ignore[arg-type]  # stub says dict
    except Exception as exc:  # noqa: BLE001 - any driver failure is the answer
        return Check("preview (EGL)", False, f"no headless OpenGL context: {str(exc).splitlines()[0]}",
                     "Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri (Mesa EGL); elsewhere a GPU driver with EGL")
    try:
        info = ctx.info.get("GL_RENDERER", "?")
        version = ctx.version_code
    finally:
        ctx.release()
    compute = "compute shaders" if version >= 430 else "transform feedback (no GL 4.3 compute)"
    return Check("preview (EGL)", True, f"OpenGL {version // 100}.{version % 100 // 10} on {info}; particles via {compute}")


def check_video() -> Check:
    v = _version("imageio_ffmpeg")
    if v is None:
        return Check("preview video", False, "MP4/WebM output unavailable (GIF and PNG still work)",
                     "pip install 'stepx-bridge[mp4]' (imageio-ffmpeg ships its own ffmpeg)")
    return Check("preview video", True, f"imageio-ffmpeg {v}: --out x.mp4 / x.webm")


def port_free(host: str, port: int, kind: int) -> bool:
    """Whether ``port`` can be bound on ``host`` right now (TCP or UDP by ``kind``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(ports: Iterable[tuple[str, int, int]] | None = None, host: str = DEFAULT_HOST) -> Check:
    """The default ports ``stepx serve`` binds: ``(label, port, SOCK_STREAM|SOCK_DGRAM)``."""
    ports = list(ports) if ports is not None else [
        ("ZeroMQ data", DATA_PORT, socket.SOCK_STREAM), ("ZeroMQ control", CONTROL_PORT, socket.SOCK_STREAM),
        ("OSC control", OSC_CONTROL_PORT, socket.SOCK_DGRAM)]
    busy = [f"{label} {port}" for label, port, kind in ports if not port_free(host, port, kind)]
    listed = ", ".join(f"{label} {port}" for label, port, _ in ports)
    if busy:
        return Check("ports", False, f"in use on {host}: {', '.join(busy)} (another stepx serve?)",
                     "stop the other process, or pick free ones: stepx serve --zmq tcp://127.0.0.1:PORT "
                     "--control tcp://127.0.0.1:PORT --osc-control 127.0.0.1:PORT")
    return Check("ports", True, f"free on {host}: {listed} (OSC out goes to {OSC_OUT_PORT})")


def check_oscdump(path: str | None = None) -> Check:
    found = shutil.which("oscdump", path=path)
    if found is None:
        return Check("oscdump", False, "oscdump not found (to watch the OSC stream by hand)",
                     "Debian/Ubuntu: apt-get install liblo-tools; macOS: brew install liblo")
    return Check("oscdump", True, found)


def check_pyzmq() -> Check:
    v = _version("zmq")
    if v is None:
        return Check("pyzmq", False, "pyzmq is not installed", "pip install pyzmq", required=True)
    return Check("pyzmq", True, f"pyzmq {v} here; TouchDesigner needs pyzmq in its own Python too "
                 "(docs/TOUCHDESIGNER.md, 'Install')")


def check_texture_sharing() -> Check:
    """Spout (Windows), Syphon (macOS), NDI (any): the GPU texture outputs."""
    wanted = {"win32": ("SpoutGL", "spout"), "darwin": ("syphon", "syphon")}.get(sys.platform)
    have: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    for module, extra in ([wanted] if wanted else []) + [("cyndilib", "ndi")]:
        (have if importlib.util.find_spec(module) else missing).append((module, extra))
    detail = ", ".join(f"{m} ok" for m, _ in have) or "none installed"
    if not wanted:
        detail += f" (Spout is Windows-only and Syphon macOS-only; this is {sys.platform})"
    fix = " ".join(f"pip install 'stepx-bridge[{extra}]'" for _, extra in missing)
    return Check("Spout/Syphon/NDI", not missing, detail, fix)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "firefox", "microsoft-edge")


def check_browser(path: str | None = None) -> Check:
    """A browser for ``stepx explore`` (any one; macOS and Windows have one)."""
    if sys.platform in ("darwin", "win32"):
        return Check("browser", True, "the system browser")
    found = next((b for b in (shutil.which(n, path=path) for n in BROWSERS) if b), None)
    if found is None:
        return Check("browser", False, "no browser found for the explorer",
                     "apt-get install chromium (or open the explorer's URL from any machine's browser)")
    return Check("browser", True, found)


def check_extra(name: str, module: str, extra: str, purpose: str) -> Check:
    v = _version(module) if importlib.util.find_spec(module) else None
    if v is None:
        return Check(name, False, f"{module} not installed ({purpose})", f"pip install 'stepx-bridge[{extra}]'")
    return Check(name, True, f"{module} {v} ({purpose})")


def check_fused_maps() -> Check:
    """Triton, for the fused MM-DiT map kernel (bridge/capture/joint_kernel.py): wanted on CUDA only."""
    import torch

    if not torch.cuda.is_available():
        return Check("fused maps", True, "no CUDA device: SD3/FLUX maps are computed op by op (Triton not needed)")
    return check_extra("fused maps", "triton", "gpu", "one fused kernel per SD3/FLUX joint layer; without it the maps go op by op")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_python, check_torch, check_threads, check_egl, check_video, check_ports, check_oscdump, check_pyzmq,
    check_texture_sharing, check_browser, check_fused_maps,
    lambda: check_extra("relevance", "ray", "relevance", "stepx relevance over many prompts"),
)


def run_checks(checks: Iterable[Callable[[], Check]] = CHECKS) -> list[Check]:
    """Every check's result; a check that raises becomes a failed line naming the error."""
    out = []
    for check in checks:
        try:
            out.append(check())
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
            name = getattr(check, "__name__", "check").removeprefix("check_")
            out.append(Check(name, False, f"the check failed: {type(exc).__name__}: {exc}", "report this with stepx -vv doctor"))
    return out


def format_report(checks: list[Check]) -> str:
    """Aligned lines: ``ok``/``--`` (``!!`` when required), name, detail, and ``fix:`` under a missing thing."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok" if c.ok else ("!!" if c.required else "--")
        lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"    {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)
