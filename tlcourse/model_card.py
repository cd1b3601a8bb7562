"""The model card of an export: what the model is, what it was trained on, how good it is, where it fails.

Every figure comes from the checkpoint and the evaluation made during the export; nothing is
typed by hand. The card is Markdown, so it reads the same in a file browser and on the demo page.
"""

from __future__ import annotations

from pathlib import Path

from .evaluation import NO_TEST, Evaluation


def model_card(manifest: dict, ckpt: dict, evaluation: Evaluation, data_dir: Path) -> str:
    s = evaluation.summary()
    low, high = s["interval95_wilson"]
    counts = {"val": evaluation.val.n, **({"test": evaluation.test.n} if evaluation.test else {})}
    recall = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in s["recall"].items())
    accepted = "" if s["accepted_accuracy"] is None else f", {s['accepted_accuracy']:.3f} accurate on those"
    lines = [
        f"# Model card: {manifest['arch']} on {data_dir.name}",
        "",
        "## Model",
        f"- architecture: {manifest['arch']}, head: {manifest['head']}, "
        f"backbone weights: {manifest.get('weights') or 'none (random init)'}",
        f"- trained with freeze={ckpt.get('freeze')}, checkpoint epoch {manifest['epoch']} (chosen on val/)",
        f"- classes ({len(evaluation.class_names)}): {', '.join(evaluation.class_names)}",
        f"- input: {ckpt['image_size']} px RGB, ImageNet mean/std (preprocessing.json)",
        f"- exported by tlcourse {manifest['tlcourse']} (torch {manifest['versions']['torch']})",
        "",
        "## Data",
        f"- folder: {data_dir.name}; images: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        "",
        "## How good is it",
        f"- {s['split']} accuracy {s['accuracy']:.4f} on {s['images']} images, 95 % Wilson interval "
        f"[{low:.4f}, {high:.4f}]",
        f"- recall per class: {recall}",
        f"- calibration (ECE, 10 bins) on {s['split']}: {s['ece_before']:.4f} raw, {s['ece_after']:.4f} after "
        f"temperature T={s['temperature']:.3f} fitted on val/ (the exported probabilities use it)",
        f"- \"unknown\" below probability {s['threshold']:.4f}, chosen on val/ for {s['threshold_target']:.0%} "
        f"accuracy: answers {s['accepted_share']:.1%} of {s['split']}{accepted}",
        "",
        "## Limitations",
        f"- It only knows {', '.join(evaluation.class_names)}: any other picture still gets one of these names "
        "unless its top probability is under the threshold, and a confident wrong answer is possible.",
        f"- {s['images']} evaluation images: one image is {100 / max(1, s['images']):.2f} % of accuracy; "
        "the interval above is the honest precision.",
        "- Photos unlike the training images (other cameras, lighting, backgrounds) may score lower.",
    ]
    if not evaluation.has_test:
        lines.append(f"- {NO_TEST}.")
    return "\n".join(lines) + "\n"
