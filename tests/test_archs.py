"""The architecture table is the only place that knows an architecture.

Every entry is checked against the real torchvision model (cut points, widths, CAM layer), and a
new architecture is added in a test by one table entry, nothing else: freezing, the report, the
fast routes, training, prediction and the CLI then work for it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlcourse.archs import ARCHS, ArchSpec, block_of, spec_of
from tlcourse.checkpoints import model_from_checkpoint
from tlcourse.cli import main
from tlcourse.engine import train
from tlcourse.fast import cache_bytes_estimate, prefix_problem, split_model
from tlcourse.freeze import apply_freeze, blocks, preset_blocks, trainable_blocks, trunk
from tlcourse.heads import head_in_features
from tlcourse.models import build_model
from tlcourse.predict import Predictor
from tlcourse.report import trainable_report

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_table_entry_matches_the_torchvision_model(arch):
    spec = ARCHS[arch]
    model = build_model(arch, 3, weights=None).eval()
    assert spec_of(model) is spec
    assert head_in_features(model) == spec.feature_dim
    names = list(blocks(model))
    assert names[-1] == spec.head and set(spec.last_stage) <= set(names)
    assert all(block_of(p) in names for p, _ in model.named_parameters())  # every parameter has a block
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        full = model(x)
        for point in ("features", "layer3"):
            split = split_model(model, point)
            cut = split.prefix(x)
            assert torch.allclose(split.suffix(cut), full, atol=1e-5), point   # the halves compose to the model
            dtype = torch.float16 if point == "layer3" else torch.float32
            assert cut.numel() * dtype.itemsize == cache_bytes_estimate(spec, 2, SIZE, point, dtype)
        seen = []
        hook = model.get_submodule(spec.cam_layer).register_forward_hook(lambda m, i, out: seen.append(out))
        model(x)
        hook.remove()
    # Grad-CAM's layer: the last convolutional stage, whose maps are pooled into the head's input
    assert seen[0].ndim == 4 and seen[0].shape[1] == spec.feature_dim
    assert spec.cam_layer == [n for n in blocks(model) if n != spec.head][-1]
    if spec.head_dropout:
        assert isinstance(model.get_submodule(spec.head)[0], nn.Dropout)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_presets_and_cached_cuts_for_every_arch(arch):
    model = build_model(arch, 3, weights=None)
    spec = ARCHS[arch]
    apply_freeze(model, "head")
    assert trainable_blocks(model) == [spec.head]
    assert prefix_problem(split_model(model, "features").prefix) is None
    apply_freeze(model, "last_stage")
    assert trainable_blocks(model) == [*spec.last_stage, spec.head]
    assert prefix_problem(split_model(model, "layer3").prefix) is None
    report = trainable_report(model)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_random_layers_in_frozen_blocks_stay_in_eval():
    """EfficientNet's stochastic depth would make a frozen block random: frozen means fixed."""
    model = apply_freeze(build_model("efficientnet_b0", 2, weights=None), "last_stage")
    model.train()
    frozen = {name for name in blocks(model) if name not in preset_blocks(model, "last_stage")}
    random_layers = [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("StochasticDepth")]
    assert random_layers
    for name, module in random_layers:
        assert module.training == (block_of(name + ".x") not in frozen), name
    x = torch.randn(2, 3, SIZE, SIZE)
    prefix = split_model(model, "layer3").prefix
    with torch.no_grad():
        assert torch.equal(prefix(x), prefix(x))


def test_efficientnet_trains_caches_and_predicts(tiny_data, tmp_path, capsys):
    result = train(data_dir=str(tiny_data), arch="efficientnet_b0", weights=None, freeze="last_stage", epochs=1,
                   batch_size=4, image_size=SIZE, augment=False, output_dir=str(tmp_path), progress="none")
    assert result.route == "layer3" and "features.5" in result.route_description
    predictor = Predictor(result.best_acc_path, device="cpu")
    assert len(predictor.predict_folder(tiny_data / "val")) == 12
    assert main(["report", "--arch", "efficientnet_b0", "--freeze", "last_stage"]) == 0
    assert "features.6" in capsys.readouterr().out


REGNET = ArchSpec("regnet_y_400mf", "RegNet", ("stem", "trunk_output.*"), "fc", ("trunk_output.block4",),
                  "trunk_output.block4", 440, 208)


def test_a_new_architecture_is_one_table_entry(tiny_data, tmp_path, monkeypatch, capsys):
    """RegNet-Y-400MF is not shipped; its table entry alone makes every feature work."""
    monkeypatch.setitem(ARCHS, REGNET.name, REGNET)
    model = build_model(REGNET.name, 2, weights=None)
    assert list(blocks(model)) == ["stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3",
                                   "trunk_output.block4", "fc"]
    assert [n for n, _ in trunk(model)][:2] == ["stem", "trunk_output.block1"]
    assert block_of("trunk_output.block3.b1.f.a.0.weight") == "trunk_output.block3"
    result = train(data_dir=str(tiny_data), arch=REGNET.name, weights=None, freeze="last_stage", epochs=1,
                   batch_size=4, image_size=SIZE, augment=False, output_dir=str(tmp_path), progress="none")
    assert result.route == "layer3" and "trunk_output.block3" in result.route_description
    rebuilt = model_from_checkpoint(result.best_acc_path)
    assert type(rebuilt).__name__ == "RegNet"
    assert main(["report", "--arch", REGNET.name, "--freeze", "last_stage"]) == 0
    out = capsys.readouterr().out
    assert "trunk_output.block4" in out and "Trainable" in out
    assert main(["predict", "--image", str(tiny_data / "val"), "--checkpoint", str(result.best_acc_path),
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("IMAGE:") == 12
