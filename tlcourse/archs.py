"""What the course knows about each architecture, in one table (in the spirit of fastai's ``model_meta``).

Every module that needs to know where a network's head is, how its body is ordered, which
blocks make up its last stage, where it can be cut for caching or which layer Grad-CAM looks
at reads it from here. Adding a torchvision classifier whose body is a sequence of stages
followed by global average pooling and a head is one entry in ``ARCHS``.

This module is plain data (no torch import), so the command line can list architectures at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """One architecture.

    * ``name``: torchvision's model name (``torchvision.models.get_model(name)``); its weights
      enum comes from ``get_model_weights(name)``.
    * ``model_class``: the torchvision class, to recognise a model built elsewhere.
    * ``trunk``: the modules the forward pass runs before global average pooling, in order;
      ``"features.*"`` stands for every child of ``features``. Those that own parameters are
      the *blocks* the course freezes and reports on, followed by the head.
    * ``head``: the attribute holding the classifier (``fc`` or ``classifier``).
    * ``last_stage``: the blocks of the stride-32 stage; ``freeze="last_stage"`` trains them
      and the head, and the fast path caches the input of the first of them.
    * ``cam_layer``: the last convolutional stage, whose activations Grad-CAM weighs.
    * ``feature_dim``: width of the pooled features (the head's input).
    * ``cut_channels``: channels of the last stage's input (stride 16), for cache sizes.
    * ``head_dropout``: torchvision's dropout in front of the classifier, kept in front of a
      new linear head (0: none).
    """

    name: str
    model_class: str
    trunk: tuple[str, ...]
    head: str
    last_stage: tuple[str, ...]
    cam_layer: str
    feature_dim: int
    cut_channels: int
    head_dropout: float = 0.0


_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet(name: str, feature_dim: int, cut_channels: int) -> ArchSpec:
    return ArchSpec(name, "ResNet", _RESNET_TRUNK, "fc", ("layer4",), "layer4", feature_dim, cut_channels)


ARCHS: dict[str, ArchSpec] = {spec.name: spec for spec in (
    _resnet("resnet18", 512, 256),
    _resnet("resnet34", 512, 256),
    _resnet("resnet50", 2048, 1024),
    ArchSpec("mobilenet_v2", "MobileNetV2", ("features.*",), "classifier",
             tuple(f"features.{i}" for i in range(14, 19)), "features.18", 1280, 96, head_dropout=0.2),
    ArchSpec("efficientnet_b0", "EfficientNet", ("features.*",), "classifier",
             ("features.6", "features.7", "features.8"), "features.8", 1280, 112, head_dropout=0.2),
)}


def expanded_containers() -> set[str]:
    """Containers whose children are blocks of their own (``features`` → ``features.3``)."""
    return {entry[:-2] for spec in ARCHS.values() for entry in spec.trunk if entry.endswith(".*")}


def get_spec(arch: str) -> ArchSpec:
    from . import TLCourseError

    try:
        return ARCHS[arch]
    except (KeyError, TypeError):
        raise TLCourseError(f"arch={arch!r} is not supported; choose one of {', '.join(ARCHS)}") from None


def spec_of(model) -> ArchSpec:
    """The spec of a model: from ``build_model``'s record, else from its torchvision class."""
    recorded = getattr(model, "tlcourse_spec", None)
    if isinstance(recorded, dict) and recorded.get("arch") in ARCHS:
        return ARCHS[recorded["arch"]]
    name = type(model).__name__
    for spec in ARCHS.values():
        if spec.model_class == name:
            return spec
    from . import TLCourseError

    raise TLCourseError(f"{name} is not an architecture tlcourse knows; supported: {', '.join(ARCHS)}")


def block_of(param_name: str) -> str:
    """The block a parameter belongs to: ``layer4.1.conv2.weight`` → ``layer4``,
    ``features.3.conv.0.weight`` → ``features.3``."""
    for container in expanded_containers():
        if param_name.startswith(container + "."):
            rest = param_name[len(container) + 1:].split(".")
            if len(rest) > 1:
                return f"{container}.{rest[0]}"
    return param_name.split(".")[0]
