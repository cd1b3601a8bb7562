"""The frozen backbone's one-time pass on ONNX Runtime: the same math, from a runtime made for inference.

A cached route runs the frozen part of the network once over every image (``tlcourse.fast``).
On a CPU, PyTorch eager is 1.7-4x slower at that job than ONNX Runtime, which fuses and plans a
fixed graph ahead of time. So each frozen part (up to the last stage, then the rest with pooling)
is exported once to ONNX (eval mode, frozen BatchNorm folded by the exporter, dynamic batch axis)
and run by an ONNX Runtime session; the result is a module with the part's interface, so the pass
does not know which runtime it drives.

**Cache.** The exported graph is an entry of the feature cache itself (a ``uint8`` entry: atomic
write, checksum, ``python -m tlcourse cache`` lists and clears it), keyed on the part's content
(structure and every weight), the input shape and the torch, onnx and onnxruntime versions. The
features' own keys carry the runtime and its version (:func:`frozen_parts` returns it), so a cache
filled by torch never serves an ONNX Runtime run, nor the other way round.

**Fallback.** ``backbone_runtime="auto"`` uses ONNX Runtime on the CPU when it is installed and
PyTorch eager on CUDA/MPS. A missing onnxruntime, an export that fails, a graph ONNX Runtime
cannot load: one printed line saying which and why, then PyTorch eager; a truncated or damaged
cached graph is reported by the cache and exported again. Never a crash, never a wrong hit.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..config import BACKBONE_RUNTIMES as RUNTIMES

__all__ = ["OPSET", "RUNTIMES", "OrtPart", "decode_workers", "frozen_parts", "onnxruntime_version", "ort_threads",
           "planned_runtime", "runtime_name"]

OPSET = 17
#: With ``"auto"``, a pass over fewer images runs in eager mode unless its graphs are already cached:
#: exporting (1-3 s) would cost more than ONNX Runtime saves on so few images.
SMALL_PASS = 64
#: Bump when the way graphs are exported changes: old cached graphs are then not used.
GRAPH_FORMAT = 1


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, or None when it cannot be imported."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def _cores() -> int:
    """The cores this process may use: torch's intra-op thread count (one per core unless set lower)."""
    return max(1, torch.get_num_threads())


def decode_workers() -> int:
    """Loader workers that decode beside an ONNX Runtime pass: half the cores (1 of 2).

    On 2 cores, measured (``python -m tlcourse bench``): JPEG decode + resize of one worker keeps
    up with a one-thread session, while 2 workers + 2 session threads oversubscribe the cores and
    lose what the runtime gains. The cores are split, not shared.
    """
    return max(1, _cores() // 2)


def ort_threads() -> int:
    """Intra-op threads of a session: the cores the decoding workers leave (1 of 2, 2 of 4)."""
    return max(1, _cores() - _cores() // 2)


def runtime_name(requested: str, device) -> tuple[str, str]:
    """``(runtime, why)``: ``"onnxruntime"`` or ``"torch"`` for ``backbone_runtime=requested`` on ``device``."""
    device = torch.device(device)
    if requested == "torch":
        return "torch", "backbone_runtime='torch'"
    if device.type != "cpu":
        return "torch", f"ONNX Runtime is used on the CPU only; this run is on {device.type}"
    if onnxruntime_version() is None:
        return "torch", "onnxruntime is not installed (pip install onnxruntime)"
    return "onnxruntime", "the CPU-inference runtime"


class OrtPart(nn.Module):
    """One frozen part as an ONNX Runtime session: takes and returns CPU float32 tensors."""

    def __init__(self, graph: bytes, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or ort_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])


def export_graph(part: nn.Module, example: torch.Tensor) -> bytes:
    """``part`` (in eval mode) as ONNX bytes with dynamic batch and image axes (the TorchScript
    exporter: it works offline, without onnxscript, and is fast for these convolutional networks)."""
    buffer = io.BytesIO()
    modes = {m: m.training for m in part.modules()}
    try:
        part.eval()
        with torch.no_grad():
            spatial = part(example).dim() == 4           # a feature map keeps its height and width axes
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")              # the TorchScript exporter's deprecation notice
            torch.onnx.export(part, (example,), buffer, dynamo=False, input_names=["input"],
                              output_names=["output"], opset_version=OPSET,
                              dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                            "output": {0: "batch"} | ({2: "h", 3: "w"} if spatial else {})})
    finally:
        for m, mode in modes.items():
            m.training = mode
    return buffer.getvalue()


def graph_key(part: nn.Module, name: str, shape: tuple[int, ...], ort_version: str) -> dict:
    """What an exported graph depends on: the part's content, its input shape and every version involved."""
    import onnx

    from ..feature_cache import fingerprint_module

    return {"kind": "tlcourse.backbone_graph", "format": GRAPH_FORMAT, "part": name,
            "model": fingerprint_module(part), "channels": list(shape), "opset": OPSET, "exporter": "torchscript",
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort_version}


def cached_graph(part: nn.Module, name: str, example: torch.Tensor, cache, ort_version: str, what: str, *,
                 export: bool = False) -> bytes:
    """The ONNX bytes of ``part`` from the feature cache, else (or with ``export``) exported now and stored."""
    key = graph_key(part, name, tuple(example.shape[1:2]), ort_version)
    hit = cache.load(key) if cache is not None and cache.enabled and not export else None
    if hit is not None:
        return hit[0].numpy().tobytes()
    graph = export_graph(part, example)
    writer = cache.writer(key, what) if cache is not None else None
    if writer is not None:
        try:
            writer.write(torch.frombuffer(bytearray(graph), dtype=torch.uint8).view(1, -1))
            cache.committed(writer.commit([0]))
        except OSError as exc:                       # disk full: the graph is used from memory this time
            writer.abort()
            cache.fail(exc)
    return graph


def planned_runtime(parts: list[tuple[str, nn.Module]], requested: str, device, example: torch.Tensor, *,
                    cache=None, images: int | None = None) -> tuple[str, str | None]:
    """``(runtime, why eager)``: which runtime :func:`frozen_parts` will use, decided without loading anything.

    A pass keys and reads its cached features by this name first, so a warm run loads no session.
    ``why eager``: the line to print when PyTorch runs although ONNX Runtime was possible or asked for.
    """
    name, why = runtime_name(requested, device)
    if name == "torch":
        return "torch", (why if requested != "torch" and torch.device(device).type == "cpu" else None)
    odd = next((p.dtype for _, part in parts for p in part.parameters() if p.dtype != torch.float32), None)
    if odd is not None:
        return "torch", f"the frozen part is {odd}; the ONNX route exports float32"
    version = onnxruntime_version()
    if requested == "auto" and images is not None and images < SMALL_PASS and not _cached(parts, example, cache,
                                                                                         version):
        return "torch", None
    return f"onnxruntime {version}", None


def frozen_parts(parts: list[tuple[str, nn.Module]], requested: str, device, example: torch.Tensor, *,
                 cache=None, arch: str = "", threads: int | None = None, images: int | None = None,
                 log: Callable[[str], None] = print) -> tuple[str, list]:
    """``(runtime, parts)``: the frozen ``parts`` to run on ``example``-shaped batches, and which runtime runs them.

    ``runtime`` is ``"onnxruntime <version>"`` or ``"torch"`` (it belongs in the features' cache
    key). ``threads``: the sessions' intra-op threads (default :func:`ort_threads`, the cores the
    decoding workers leave). ``images``: the size of the pass; with ``"auto"`` fewer than
    :data:`SMALL_PASS` run eagerly unless the graphs are cached. With ONNX Runtime every part is
    exported (or read from ``cache``) and loaded into a session now, so a failure falls back to
    PyTorch before any feature is computed or keyed.
    """
    runtime, why = planned_runtime(parts, requested, device, example, cache=cache, images=images)
    if runtime == "torch":
        if why:
            log(f"backbone runtime: PyTorch eager ({why})")
        return "torch", parts
    try:
        with torch.random.fork_rng(devices=[]):           # exporting draws nothing, but keep a seeded run's stream
            out = _load_parts(parts, example, cache, onnxruntime_version(), arch, threads)
    except Exception as exc:   # noqa: BLE001 - any exporter/runtime failure: the eager route still works
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log(f"backbone runtime: PyTorch eager (exporting {arch or 'the frozen part'} to ONNX Runtime failed: "
            f"{type(exc).__name__}: {text[:200]})")
        return "torch", parts
    return runtime, out


def _cached(parts: list[tuple[str, nn.Module]], example: torch.Tensor, cache, version: str) -> bool:
    """True if every part's graph is in ``cache`` (a file by its key's name; it is checked when read)."""
    if cache is None or not cache.enabled:
        return False
    x = example.to("cpu", torch.float32)
    for name, part in parts:
        if not cache.path(graph_key(part, name, tuple(x.shape[1:2]), version)).is_file():
            return False
        with torch.no_grad():
            x = _eval_output(part, x)
    return True


def _load_parts(parts: list[tuple[str, nn.Module]], example: torch.Tensor, cache, version: str, arch: str,
                threads: int | None) -> list:
    """Each part as an ONNX Runtime session, its graph read from the cache or exported now."""
    out = []
    x = example.to("cpu", torch.float32)
    for part_name, part in parts:
        what = f"{arch} frozen part up to {part_name} as an ONNX graph (input channels {x.shape[1]})"
        graph = cached_graph(part, part_name, x, cache, version, what)
        try:
            session = OrtPart(graph, threads)
        except Exception:   # noqa: BLE001 - an intact file ONNX Runtime refuses: export it again, once
            session = OrtPart(cached_graph(part, part_name, x, cache, version, what, export=True), threads)
        out.append((part_name, session))
        with torch.no_grad():
            x = _eval_output(part, x)                   # the next part's example input
    return out


def _eval_output(part: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``part(x)`` in eval mode, leaving its training flags as they were."""
    modes = {m: m.training for m in part.modules()}
    try:
        return part.eval()(x)
    finally:
        for m, mode in modes.items():
            m.training = mode

