"""A web demo of a trained model with Gradio: upload a photo, get top-k, "unknown" and Grad-CAM.

``build_demo(model_dir=...)`` serves an export folder (ONNX Runtime answers; the model card is
shown); ``build_demo(checkpoint=...)`` serves a checkpoint directly (PyTorch; temperature and
threshold are fitted on its val/ split at start). Grad-CAM needs PyTorch and the checkpoint: from
an export it is drawn when the checkpoint the export names is still there, otherwise the page
says why it is missing.

``launch`` binds 127.0.0.1 unless told otherwise (a demo is not a public service) and refuses a
port in use with one line. In JupyterLab ``launch(demo, inline=True)`` shows the page in the
notebook. Every upload is opened by ``tlcourse.images.open_rgb``, which refuses decompression
bombs from the header; a file that is not an image gets a one-line message on the page and the
server keeps serving.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from . import TLCourseError
from .onnx_predict import FILES, OnnxClassifier

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "20mb"


class DemoModel:
    """What the page needs: class names, calibrated probabilities for a file, an optional Grad-CAM overlay."""

    def __init__(self, *, model_dir=None, checkpoint=None, data_dir=None, int8: bool = False):
        if (model_dir is None) == (checkpoint is None):
            raise TLCourseError("serve needs exactly one of --model EXPORT_FOLDER or --checkpoint RUN/best_acc.pt")
        self.notes: list[str] = []
        self.onnx: OnnxClassifier | None = None
        self.predictor = None
        self.card = ""
        if model_dir is not None:
            self.onnx = OnnxClassifier(model_dir, int8=int8)
            self.labels, self.temperature, self.threshold = self.onnx.labels, self.onnx.temperature, self.onnx.threshold
            self.draft, self.card = self.onnx.pre.get("draft"), (Path(model_dir) / FILES["card"]).read_text("utf-8")
            self.data_dir = self.onnx.manifest.get("data_dir")
            self._torch_for_cam(self.onnx.manifest.get("checkpoint"))
        else:
            self._from_checkpoint(checkpoint, data_dir)

    def _torch_for_cam(self, checkpoint) -> None:
        try:
            from .predict import Predictor

            self.predictor = Predictor(checkpoint, device="cpu")
            if self.predictor.class_names != self.labels:
                raise ValueError("the checkpoint now holds another model")
        except Exception:  # no torch, the checkpoint moved or changed: the demo works without the overlay
            self.predictor = None
            self.notes.append("Grad-CAM is off: it needs PyTorch and the checkpoint this export was made from "
                              f"({checkpoint}); serve --checkpoint shows it")

    def _from_checkpoint(self, checkpoint, data_dir) -> None:
        from .checkpoints import load_checkpoint
        from .data import resolve_data_dir
        from .evaluation import evaluate_model
        from .predict import Predictor

        ckpt = load_checkpoint(checkpoint)
        self.predictor = Predictor(ckpt, device="cpu")
        self.labels = self.predictor.class_names
        self.draft = None
        self.temperature, self.threshold = 1.0, 0.0
        data = data_dir if data_dir is not None else (ckpt.get("config") or {}).get("data_dir")
        self.data_dir = str(resolve_data_dir(data))
        try:
            ev = evaluate_model(self.predictor.model, self.labels, self.predictor.image_size, data)
            self.temperature, self.threshold = ev.temperature, ev.threshold.value
            self.card = f"```\n{ev}\n```"
        except TLCourseError as exc:
            self.notes.append(f"no val/ split to fit the temperature and the unknown threshold on ({exc}); "
                              "probabilities are uncalibrated and nothing is called unknown")

    def probabilities(self, path) -> np.ndarray:
        """Calibrated class probabilities of one file; ``TLCourseError`` (one line) for a bad file."""
        from .onnx_predict import softmax

        if self.onnx is not None:
            return softmax(self.onnx.logits(self.onnx.load(path)[None]), self.temperature)[0]
        from .calibration import as_two_columns

        tensor = self.predictor._load(Path(path))[None]
        import torch

        with torch.no_grad():
            logits = self.predictor.model(tensor).numpy()
        return softmax(as_two_columns(logits), self.temperature)[0]

    def overlay(self, path):
        """The Grad-CAM overlay of the predicted class as an (H, W, 3) float array, or None."""
        if self.predictor is None:
            return None
        from .gradcam import grad_cam

        cam = grad_cam(self.predictor.model, self.predictor._load(Path(path))[None])
        return cam.overlay(0)


def classify(model: DemoModel, path, topk: int = 3):
    """(label dict for gr.Label, verdict Markdown, overlay or None); a bad file gives a message, not a crash."""
    if not path:
        return {}, "Upload an image.", None
    try:
        probs = model.probabilities(path)
    except TLCourseError as exc:
        return {}, f"**Cannot use this file:** {exc}", None
    order = np.argsort(-probs)[:topk]
    top = {model.labels[i]: float(probs[i]) for i in order}
    best, p = model.labels[order[0]], float(probs[order[0]])
    if p < model.threshold:
        verdict = (f"**unknown**: the top class {best} has p={p:.3f}, below the threshold {model.threshold:.3f} "
                   "chosen on val/")
    else:
        verdict = f"**{best}** (p={p:.3f})"
    try:
        overlay = model.overlay(path)
    except Exception:  # an overlay must never take the answer down
        overlay = None
    return top, verdict, overlay


def example_images(model: DemoModel, data_dir=None, per_class: int = 1) -> list[str]:
    """The first val/ image(s) of each class, when the dataset is at hand."""
    from .images import is_image_file

    root = Path(data_dir or model.data_dir or "")
    if not (data_dir or model.data_dir) or not (root / "val").is_dir():
        return []
    found = []
    for name in model.labels:
        folder = root / "val" / name
        if folder.is_dir():
            found += [str(p) for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)][:per_class]
    return found


def build_demo(*, model_dir=None, checkpoint=None, data_dir=None, int8: bool = False, topk: int = 3):
    """The Gradio Blocks of the demo (not launched)."""
    import gradio as gr

    model = DemoModel(model_dir=model_dir, checkpoint=checkpoint, data_dir=data_dir, int8=int8)
    topk = max(1, min(topk, len(model.labels)))
    examples = example_images(model, data_dir)
    with gr.Blocks(title="tlcourse demo") as demo:
        gr.Markdown(f"# {' / '.join(model.labels)}\nUpload or drop a photo. Top {topk} classes with calibrated "
                    f"probabilities; below p={model.threshold:.3f} the answer is *unknown*.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                if examples:
                    gr.Examples(examples=examples, inputs=upload, label="validation images")
            with gr.Column():
                verdict = gr.Markdown(elem_id="verdict")
                label = gr.Label(num_top_classes=topk, label="top classes", elem_id="topk")
                cam = gr.Image(label="Grad-CAM: where the evidence is", type="numpy", interactive=False)
        for note in model.notes:
            gr.Markdown(f"*{note}*")
        if model.card:
            with gr.Accordion("model card", open=False):
                gr.Markdown(model.card)
        upload.change(lambda path: classify(model, path, topk), inputs=upload, outputs=[label, verdict, cam],
                      api_name="classify")
    demo.tlcourse_model = model
    demo.tlcourse_examples = examples
    return demo


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TLCourseError(f"port {port} on {host} is in use or not allowed ({exc.strerror}); pass another "
                                "--port or stop the other server") from None


def free_port(host: str = DEFAULT_HOST, start: int = DEFAULT_PORT, tries: int = 200) -> int:
    """The first port from ``start`` on that ``host`` can bind (a notebook's demo never collides)."""
    for port in range(start, start + tries):
        try:
            check_port(host, port)
            return port
        except TLCourseError:
            continue
    raise TLCourseError(f"no free port in {start}-{start + tries - 1} on {host}; pass port=...")


def launch(demo, *, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, inline: bool | None = None,
           block: bool = True) -> str:
    """Serve ``demo`` on ``host:port`` (127.0.0.1 by default; ``port=None``: the first free one from 7860).

    ``block=False`` returns at once (tests, notebooks). Returns the page's URL.
    """
    port = free_port(host) if port is None else port
    check_port(host, port)
    allowed = sorted({str(Path(p).parent.parent) for p in getattr(demo, "tlcourse_examples", [])})
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, inline=inline, prevent_thread_lock=not block,
                       quiet=True, max_file_size=MAX_UPLOAD, allowed_paths=allowed, share=False,
                       footer_links=["api"])
    return f"http://{host}:{port}/"

