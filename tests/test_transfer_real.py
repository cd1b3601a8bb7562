"""Real transfer learning: the ImageNet-pretrained MobileNetV2 backbone on the ants/bees data.

Skipped (with the reason) where the offline weights or the dataset mirror are absent. For
reference, a linear probe on this backbone's pooled features reaches 0.954 val accuracy, and
the same probe on a random-init MobileNetV2 reaches 0.458.
"""

from __future__ import annotations

import pytest

from tlcourse.engine import train
from tlcourse.predict import Predictor, accuracy


@pytest.mark.slow
def test_head_only_mobilenet_reaches_092(hymenoptera_dir, mobilenet_weights, tmp_path):
    result = train(data_dir=str(hymenoptera_dir), arch="mobilenet_v2", weights=str(mobilenet_weights),
                   freeze="head", epochs=5, batch_size=32, lr=1e-3, image_size=224, seed=0,
                   progress="epoch", output_dir=str(tmp_path))
    print(result.summary())
    assert len(result.history) == 5
    assert result.best["acc"] >= 0.92, result.history
    # The saved best checkpoint reproduces that accuracy through the prediction API.
    preds = Predictor(result.best_acc_path, device="cpu").predict_folder(hymenoptera_dir / "val")
    assert len(preds) == 153
    assert accuracy(preds) == pytest.approx(result.best["acc"], abs=1e-6)
