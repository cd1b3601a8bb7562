"""Ship your model: intervals, calibration, the test split, export (ONNX, TorchScript, int8), torch-free
prediction, and the bad input of evaluate/export/serve. The browser test of the demo is test_serve_browser.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder

from tlcourse import TLCourseError
from tlcourse.calibration import (
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
    wilson_interval,
)
from tlcourse.checks import check_dataset
from tlcourse.cli import main
from tlcourse.data import summarize
from tlcourse.engine import TrainConfig, train
from tlcourse.evaluation import NO_TEST, evaluate_checkpoint
from tlcourse.export import export_checkpoint
from tlcourse.onnx_predict import FILES, OnnxClassifier
from tlcourse.predict import Predictor, list_images
from tlcourse.serve import DemoModel, check_port, classify
from tlcourse.splits import make_test_split

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("cherry", "oak", "willow")


# --------------------------------------------------------------------------- statistics, by hand

def test_wilson_interval_covers_95_percent_of_a_simulated_classifier():
    """1,000 test sets of 80 images from a classifier that is right 85 % of the time."""
    rng = np.random.default_rng(0)
    for true_acc, n in ((0.85, 80), (0.97, 150)):
        hits = rng.binomial(n, true_acc, size=1000)
        covered = np.mean([low <= true_acc <= high for low, high in (wilson_interval(int(k), n) for k in hits)])
        assert 0.93 <= covered <= 0.975, (true_acc, n, covered)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 10)[0] == pytest.approx(0.0)
    low, high = wilson_interval(40, 50)  # textbook value: 0.8 on 50 -> [0.670, 0.888]
    assert abs(low - 0.6696) < 1e-3 and abs(high - 0.8876) < 1e-3


def test_ece_and_reliability_against_a_hand_computation():
    conf = np.array([0.95, 0.95, 0.85, 0.65, 0.65, 0.55])
    probs = np.stack([conf, 1 - conf], axis=1)        # class 0 is always the prediction
    labels = np.array([0, 1, 0, 0, 1, 0])              # right, wrong, right, right, wrong, right
    # bins: [0.9,1) 2 imgs acc .5 conf .95; [0.8,.9) 1 acc 1 conf .85; [0.6,.7) 2 acc .5 conf .65; [0.5,.6) 1 acc 1
    expected = (2 * 0.45 + 1 * 0.15 + 2 * 0.15 + 1 * 0.45) / 6
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    counts = [b.count for b in reliability(probs, labels)]
    assert counts == [0, 0, 0, 0, 0, 1, 2, 0, 1, 2]
    assert softmax(np.array([[2.0]]))[0, 1] == pytest.approx(1 / (1 + np.exp(-2)))  # binary head: sigmoid


def test_temperature_against_the_closed_form():
    """Margins of +-4, 80 % right: NLL is minimal where sigmoid(4 / T) = 0.8, i.e. T = 4 / ln 4."""
    labels = np.zeros(10, dtype=int)
    logits = np.array([[4.0, 0.0]] * 8 + [[0.0, 4.0]] * 2)
    assert fit_temperature(logits, labels) == pytest.approx(4 / np.log(4), rel=1e-4)


def test_threshold_by_hand():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7])
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0, 0, 1, 0, 0])                 # the third most confident is wrong
    t = choose_threshold(probs, labels, 0.75)           # cumulative accuracy 1, 1, .67, .75, .8
    assert (t.value, t.accepted, t.reached) == (0.7, 1.0, True)
    t = choose_threshold(probs, labels, 0.9)
    assert (t.value, t.accepted, t.accuracy) == (0.95, 0.4, 1.0)


# --------------------------------------------------------------------------- the test split

def test_make_test_split_is_reproducible_and_leaves_the_source_alone(tmp_path):
    source = make_image_folder(tmp_path / "src", classes=CLASSES, per_class={"train": 4, "val": 7})
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    first = make_test_split(source, tmp_path / "a", share=0.5, seed=3)
    again = make_test_split(source, tmp_path / "b", share=0.5, seed=3)
    names = {d: {s: sorted(str(p.relative_to(d / s)) for p in list_images(d / s)) for s in ("train", "val", "test")}
             for d in (first, again)}
    assert names[first] == names[again]
    assert not set(names[first]["val"]) & set(names[first]["test"])
    counts = summarize(first).counts
    assert counts["test"] == {c: 4 for c in CLASSES} and counts["val"] == {c: 3 for c in CLASSES}
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    assert make_test_split(source, tmp_path / "a", share=0.5, seed=3) == first   # reused
    with pytest.raises(TLCourseError, match="another split"):
        make_test_split(source, tmp_path / "a", share=0.3, seed=3)


def test_check_dataset_knows_an_optional_test_split(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, per_class=3, splits=("train", "val", "test"))
    check = check_dataset(root)
    assert check.ok and check.counts["test"] == {c: 3 for c in CLASSES}
    shutil.rmtree(root / "test" / "oak")
    (root / "test" / "pine").mkdir()
    shutil.copy(root / "val" / "oak" / "img_0.png", root / "test" / "pine" / "img_0.png")
    errors = [str(p) for p in check_dataset(root).errors]
    assert any("test" in e and "pine" in e and "oak" in e for e in errors), errors


# --------------------------------------------------------------------------- a trained model, exported

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ResNet-18 trained end to end (random init, 32 px) on 3 colour classes with train/val/test: it learns them."""
    root = tmp_path_factory.mktemp("ship")
    data = make_image_folder(root / "leaves", classes=CLASSES, per_class={"train": 12, "val": 8, "test": 8},
                             size=(72, 56), splits=("train", "val", "test"))
    cfg = TrainConfig(data_dir=str(data), arch="resnet18", weights=None, image_size=32, batch_size=12, epochs=4,
                      lr=1e-3, output_dir=str(root / "runs"), progress="none")
    run = train(cfg, freeze="all", run_name="ship")
    return data, run.best_acc_path, root


@pytest.fixture(scope="module")
def exported(trained):
    data, checkpoint, root = trained
    return export_checkpoint(checkpoint, root / "export", formats=("onnx", "torchscript"), int8=True,
                             calibration_images=24)


def test_evaluate_scores_test_once_with_interval_recall_and_calibration(trained):
    data, checkpoint, _ = trained
    ev = evaluate_checkpoint(checkpoint)          # data_dir from the checkpoint's config
    assert ev.has_test and ev.final.split == "test" and ev.final.n == 24 and ev.val.n == 24
    low, high = ev.final.interval
    assert low <= ev.final.accuracy <= high and set(ev.final.recall) == set(CLASSES)
    assert ev.temperature > 0 and (ev.final.probs(False).argmax(1) == ev.final.probs(True).argmax(1)).all()
    text = str(ev)
    assert "95 % Wilson interval" in text and "test accuracy" in text and NO_TEST not in text
    # without test/: val is the final word, and the result says so
    no_test = ev.data_dir.parent / "no_test"
    shutil.copytree(data, no_test, ignore=shutil.ignore_patterns("test"))
    ev2 = evaluate_checkpoint(checkpoint, no_test)
    assert not ev2.has_test and ev2.final.split == "val" and NO_TEST in str(ev2)


def test_evaluate_refuses_class_lists_that_differ(trained, tmp_path, capsys):
    data, checkpoint, _ = trained
    other = shutil.copytree(data, tmp_path / "other")
    (other / "test" / "willow").rename(other / "test" / "birch")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "birch" in err and "willow" in err and "test" in err


def test_export_parity_int8_and_folder(trained, exported):
    data, checkpoint, _ = trained
    folder = exported.folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES.values())
    for name in ("onnx", "torchscript"):
        assert exported.parity[name].images == 24 and exported.parity[name].top1_agreement == 1.0
        assert exported.parity[name].max_abs_diff < 1e-3
    rows = {r["model"]: r for r in exported.table}
    assert set(rows) == {"pytorch fp32", "onnx fp32", "onnx int8"}
    assert rows["onnx int8"]["size_mb"] < rows["onnx fp32"]["size_mb"] / 2
    # int8 accuracy: within one test image of fp32, and it agrees with PyTorch on most val images
    assert abs(rows["onnx int8"]["accuracy"] - rows["onnx fp32"]["accuracy"]) <= 1 / 24 + 1e-9
    assert exported.parity["int8"].top1_agreement >= 0.9
    manifest = json.loads((folder / FILES["manifest"]).read_text())
    assert manifest["score"]["split"] == "test" and json.loads((folder / FILES["labels"]).read_text()) == list(CLASSES)
    card = (folder / FILES["card"]).read_text()
    assert all(c in card for c in CLASSES) and "Wilson" in card and "Limitations" in card


def test_torch_free_prediction_agrees_with_pytorch_on_every_val_image(trained, exported):
    data, checkpoint, _ = trained
    images = list_images(data / "val")
    script = ("import sys; sys.modules['torch'] = None\n"
              "from tlcourse.onnx_predict import main\nrc = main(sys.argv[1:])\n"
              "assert not [m for m, v in sys.modules.items() if v is not None and m.startswith('torch')]\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", script, str(exported.folder), *map(str, images)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr
    onnx_top = [json.loads(line)["topk"][0][0] for line in proc.stdout.splitlines()]
    torch_top = [p.label for p in Predictor(checkpoint, device="cpu").predict_paths(images, topk=1)]
    assert onnx_top == torch_top and len(onnx_top) == 24
    # the blocker really blocks
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\nimport torch"],
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "import of torch halted" in blocked.stderr


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR declaring ``width`` x ``height`` RGB pixels, and IEND: no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize("head", ["binary", "mlp"])
def test_binary_and_mlp_heads_export(tmp_path, head):
    data = make_image_folder(tmp_path / "two", classes=("red", "blue"), per_class=4)
    cfg = TrainConfig(data_dir=str(data), arch="resnet18", weights=None, image_size=32, batch_size=8, epochs=1,
                      head=head, output_dir=str(tmp_path / "runs"), progress="none")
    checkpoint = train(cfg, freeze="head", run_name=head).best_acc_path
    result = export_checkpoint(checkpoint, tmp_path / "export")
    assert result.parity["onnx"].top1_agreement == 1.0 and result.parity["onnx"].max_abs_diff < 1e-3
    clf = OnnxClassifier(result.folder)
    assert clf.labels == ["blue", "red"] and clf.logits(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 2)


# --------------------------------------------------------------------------- bad input

def test_export_bad_input_is_one_line_and_overwrites_nothing(trained, exported, tmp_path, capsys):
    data, checkpoint, _ = trained
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(text), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "notes.pt" in err and not (tmp_path / "x").exists()
    before = {p.name: p.read_bytes() for p in exported.folder.iterdir()}
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(exported.folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already exists" in err and "nothing was overwritten" in err
    assert {p.name: p.read_bytes() for p in exported.folder.iterdir()} == before
    assert not list(exported.folder.parent.glob(".export.tmp-*"))


def test_export_to_a_read_only_folder(trained, tmp_path):
    from test_robust_runs import run_with_read_only

    data, checkpoint, _ = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    ((code, out, err),) = run_with_read_only([locked], [["export", "--checkpoint", str(checkpoint), "--output",
                                                         str(locked / "model")]], cwd=tmp_path)
    assert code == 2 and "\n" not in err.strip() and str(locked) in err and "--output" in err
    assert not list(locked.iterdir())


def test_serve_bad_input(exported, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err and "tlcourse export" in err
    old = shutil.copytree(exported.folder, tmp_path / "old")
    manifest = json.loads((old / FILES["manifest"]).read_text())
    manifest.update(format_version=99, tlcourse="9.9")
    (old / FILES["manifest"]).write_text(json.dumps(manifest))
    assert main(["serve", "--model", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "9.9" in err and "export the checkpoint again" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TLCourseError, match=f"port {port} .* in use"):
            check_port("127.0.0.1", port)
        assert main(["serve", "--model", str(exported.folder), "--port", str(port)]) == 2
        assert "--port" in capsys.readouterr().err


def test_demo_answers_and_survives_bad_files(trained, exported, tmp_path):
    data, _, _ = trained
    model = DemoModel(model_dir=exported.folder)
    image = list_images(data / "val" / "oak")[0]
    top, verdict, overlay = classify(model, str(image))
    assert set(top) == set(CLASSES) and overlay is not None and overlay.shape[2] == 3
    expected = OnnxClassifier(exported.folder).predict_paths([image])[0]
    assert max(top, key=top.get) == expected.topk[0][0]
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello, I am text")
    assert classify(model, str(fake))[1].startswith("**Cannot use this file:**")
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header(20_000, 20_000))  # a tiny file declaring 400 million pixels
    top, verdict, overlay = classify(model, str(bomb))
    assert top == {} and "Cannot use this file" in verdict and "\n" not in verdict
    again = classify(model, str(image))[0]
    assert set(again) == set(CLASSES)
    # serve --checkpoint: PyTorch answers, temperature and threshold fitted on the checkpoint's val/ at start
    direct = DemoModel(checkpoint=trained[1])
    top2, _, overlay2 = classify(direct, str(image))
    assert max(top2, key=top2.get) == max(again, key=again.get) and overlay2 is not None
    assert direct.temperature == pytest.approx(model.temperature) and not direct.notes


def test_the_dynamo_exporter_works_too(trained, tmp_path):
    """``dynamo=True`` (torch.export route) needs onnxscript, which is not a dependency: skipped without it."""
    pytest.importorskip("onnxscript")
    result = export_checkpoint(trained[1], tmp_path / "dynamo", dynamo=True)
    assert result.parity["onnx"].top1_agreement == 1.0 and result.parity["onnx"].max_abs_diff < 1e-3


@pytest.mark.notebooks
def test_notebook_09_on_a_three_class_folder_with_its_own_test_split(tmp_path, monkeypatch):
    """The learner's folder with a test/ of its own: used as it is, no ants or bees anywhere."""
    import nbformat

    from tlcourse.course import run_course

    folder = make_image_folder(tmp_path / "leaves", classes=CLASSES, per_class={"train": 10, "val": 6, "test": 6},
                               size=(72, 56), splits=("train", "val", "test"))
    monkeypatch.setenv("TLCOURSE_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    (result,) = run_course(folder=ROOT / "notebooks", output=tmp_path / "out", smoke=True, only=["09"],
                           overrides={"data_dir": str(folder)}, echo=lambda line: None)
    assert result.status == "ok", result.error
    assert result.key_result.startswith("leaves: test acc") and "on 18 images" in result.key_result
    text = "".join(str(o.get("text", "")) for c in nbformat.read(tmp_path / "out" / f"{result.name}.ipynb", 4).cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    assert all(name in text for name in CLASSES) and "ants" not in text and "bees" not in text
    assert not (tmp_path / "leaves_test0.5_seed0").exists()  # its own test/ was used, nothing carved


@pytest.mark.parametrize("command", ["evaluate", "export", "serve"])
def test_help_imports_neither_torch_nor_gradio_nor_onnxruntime(command):
    probe = ("import sys\nfrom tlcourse.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'gradio', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout and out.stdout.strip().endswith("[]"), out.stdout[-300:]
