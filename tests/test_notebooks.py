"""The course notebooks: structure rules, a smoke run through the course runner, and nbval.

Everything here runs offline: the tests set ``TLCOURSE_WEIGHTS=none`` / ``TLCOURSE_SMOKE=1`` for
plain (nbval) runs, and the runner's smoke mode passes ``weights=None``. See notebooks/README.md.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from tlcourse import TLCourseError, offline
from tlcourse.course import (
    CHECK_MARKER,
    ENV_SMOKE,
    ENV_WEIGHTS,
    NEEDS_PRETRAINED,
    Job,
    declared_parameters,
    find_notebooks,
    kernel_command,
    plan,
    read_key_result,
    run_course,
    run_notebook,
)
from tlcourse.settings import ENV_DATA_DIR, ENV_DATA_MIRROR, ENV_WEIGHTS_DIR

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = find_notebooks(ROOT / "notebooks")
IDS = [p.stem for p in NOTEBOOKS]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_follows_the_course_rules(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3", "the runner and nbval use the python3 kernel"
    assert nb.cells[0].cell_type == "markdown" and "learning goal" in nb.cells[0].source.lower()
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    declared = declared_parameters(path)
    assigned = [t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    # papermill skips lines it cannot parse (e.g. `x = a == b`): such a parameter could never be set
    assert sorted(declared) == sorted(assigned), \
        f"papermill sees {sorted(declared)}, the cell assigns {sorted(assigned)}"
    if "weights" in declared:
        assert ENV_WEIGHTS in declared["weights"], "weights default must read TLCOURSE_WEIGHTS (nbval runs offline)"
    if "smoke" in declared:
        assert ENV_SMOKE in declared["smoke"], "smoke default must read TLCOURSE_SMOKE"
    assert any("key-result" in c.metadata.get("tags", []) for c in nb.cells), "a cell tagged 'key-result'"
    if "weights" in declared:  # the one offline policy (tlcourse.offline), declared for the runner too
        code = "".join(c.source for c in nb.cells if c.cell_type == "code")
        needs = nb.metadata.get("tlcourse", {}).get(NEEDS_PRETRAINED)
        assert isinstance(needs, bool), f"metadata.tlcourse.{NEEDS_PRETRAINED}: true (trains or predicts) or false"
        assert "arch" in declared and "choose_weights(arch, weights, pretrained_needed=" in code
        assert ("pretrained_needed=not smoke" in code) == needs and ("pretrained_needed=False" in code) == (not needs)
        if needs:  # a pretrained result must beat always guessing the most common class, and say its weights
            assert "if pretrained and not smoke:" in code and "> majority" in code
            key = "".join(c.source for c in nb.cells if "key-result" in c.metadata.get("tags", []))
            assert "choice.label" in key, "the key result says which weights were used"
    assert "tlcourse" in "".join(c.source for c in nb.cells if c.cell_type == "code")
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if CHECK_MARKER not in cell.source:
            assert not cell.outputs, f"only {CHECK_MARKER} cells keep outputs: {cell.source[:60]!r}"
        for out in cell.outputs:
            assert out.output_type != "error" and out.get("name") != "stderr"
            text = out.get("text", "") + str(out.get("data", ""))
            for forbidden in ("/work/", "/tmp/", "/root/", "/home/"):
                assert forbidden not in text


def test_kernel_runs_this_interpreter(tmp_path, capfd):
    assert Path(kernel_command()[0]).resolve() == Path(sys.executable).resolve()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import sys, tlcourse\nfrom tlcourse.course import key_result\n"
                                  "from ipykernel.kernelapp import IPKernelApp\n"
                                  "key_result(f'{sys.executable}|{tlcourse.__file__}|{x}|{IPKernelApp.instance().transport}')",
                                  metadata={"tags": ["key-result"]}),
        nbformat.v4.new_code_cell("raise ValueError('boom')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "99_probe.ipynb"
    nbformat.write(nb, source)
    result = run_notebook(Job(source, {"x": 7}, "-"), tmp_path / "out")
    # the failing cell is named in one line (In [N] as in the executed copy, after the injected parameters)
    assert result.status == "FAILED"
    assert "99_probe: In [4] `raise ValueError('boom')` raised ValueError: boom" == result.error
    executable, package, x, transport = read_key_result(result.output).split("|")
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(package).resolve() == (ROOT / "tlcourse" / "__init__.py").resolve() and x == "7"
    # local sockets, not TCP: ipykernel's "running over TCP without encryption" warning is gone
    # (the kernel's stderr is not filtered: real errors still reach the terminal)
    assert transport == ("tcp" if os.name == "nt" else "ipc")
    assert "without encryption" not in "".join(capfd.readouterr())


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """No network, an empty torch hub cache, and a TLCOURSE_WEIGHTS_DIR holding a MobileNetV2 backbone."""
    monkeypatch.setattr(offline, "reachable", lambda url: False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "mobilenet_v2_imagenet_backbone.pth").write_bytes(b"")  # plan only looks for it
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(folder))
    return folder / "mobilenet_v2_imagenet_backbone.pth"


def test_offline_plan_of_the_course(offline_weights):
    """Offline: structure notebooks get random weights, every training notebook the pretrained backbone."""
    jobs = plan(NOTEBOOKS)
    for job in jobs:
        if "weights" not in declared_parameters(job.path):
            continue
        if nbformat.read(job.path, 4).metadata["tlcourse"][NEEDS_PRETRAINED]:
            assert job.parameters["arch"] == "mobilenet_v2" and job.parameters["weights"] == str(offline_weights)
            assert job.weights == "mobilenet_v2 mobilenet_v2_imagenet_backbone.pth"
        else:
            assert job.parameters["weights"] is None and job.weights == "resnet18 none (random init)"
            assert "arch" not in job.parameters
        assert job.notice and "resnet18-f37072fd.pth" in job.notice
    assert len({job.notice for job in jobs if job.notice}) == 2  # the runner prints each notice once
    smoke = plan(NOTEBOOKS, smoke=True)
    assert all(job.parameters.get("weights") is None and job.notice is None for job in smoke)


def _training_like_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'import os\narch = "resnet18"\nweights = os.environ.get("TLCOURSE_WEIGHTS", "DEFAULT")\n'
        'smoke = os.environ.get("TLCOURSE_SMOKE", "0") in ("1", "true")\nepochs = 10\nlr = 1e-3',
        metadata={"tags": ["parameters"]})])
    nb.metadata["tlcourse"] = {NEEDS_PRETRAINED: True}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_plan_follows_the_notebooks_weights_policy(tmp_path, offline_weights, monkeypatch):
    source = _training_like_notebook(tmp_path / "03_train.ipynb")
    (job,) = plan([source])
    assert job.parameters == {"arch": "mobilenet_v2", "weights": str(offline_weights)}
    # no backbone either: random init, said in the notice (the notebook then skips its accuracy claims)
    offline_weights.unlink()
    (job,) = plan([source])
    assert job.parameters == {"weights": None} and "accuracy checks are skipped" in job.notice
    # ResNet-18 weights in TLCOURSE_WEIGHTS_DIR: passed as the file; an explicit file is used as given
    resnet = offline_weights.parent / "resnet18-f37072fd.pth"
    resnet.write_bytes(b"")
    (job,) = plan([source], overrides={"lr": 0.01})
    assert job.parameters == {"weights": str(resnet), "lr": 0.01} and job.notice is None
    (job,) = plan([source], overrides={"weights": "my/backbone.pth", "unknown": 1})
    assert job.parameters == {"weights": "my/backbone.pth"} and job.weights == "resnet18 backbone.pth"
    # online: the name is passed on for torchvision to download
    resnet.unlink()
    monkeypatch.setattr(offline, "reachable", lambda url: True)
    (job,) = plan([source], overrides={"weights": "IMAGENET1K_V1"})
    assert job.parameters == {"weights": "IMAGENET1K_V1"} and job.weights == "resnet18 IMAGENET1K_V1"


def test_runner_prints_each_offline_notice_once(tmp_path, offline_weights):
    for name in ("01_a.ipynb", "02_b.ipynb"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            'arch = "resnet18"\nweights = "DEFAULT"', metadata={"tags": ["parameters"]})])
        nb.metadata["tlcourse"] = {NEEDS_PRETRAINED: False}
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / name)
    lines = []
    results = run_course(folder=tmp_path, output=tmp_path / "out", echo=lines.append)
    notices = [line for line in lines if line.startswith("notice:")]
    assert len(notices) == 1 and notices[0].endswith("[notebooks 01, 02]") and lines[0] == notices[0]
    assert [(r.status, r.weights) for r in results] == [("ok", "resnet18 none (random init)")] * 2


def test_missing_dataset_stops_the_course_before_any_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "data"))
    monkeypatch.setenv(ENV_DATA_MIRROR, str(tmp_path / "nowhere" / "hymenoptera_data.zip"))
    lines = []
    with pytest.raises(TLCourseError) as info:
        run_course(folder=ROOT / "notebooks", output=tmp_path / "out", smoke=True, echo=lines.append)
    message = str(info.value)
    assert ENV_DATA_MIRROR in message and "no notebook was run" in message and "\n" not in message
    assert lines == [] and not (tmp_path / "out").exists()
    # structure notebooks alone need no dataset
    assert "data_dir" not in declared_parameters(NOTEBOOKS[0])


def test_smoke_run_of_every_notebook(tmp_path):
    lines = []
    results = run_course(folder=ROOT / "notebooks", output=tmp_path, smoke=True, echo=lines.append)
    check_claims(tmp_path, results, "resnet18")
    failed = [r.error for r in results if r.status != "ok"]
    assert not failed, failed
    assert [r.name for r in results] == IDS
    assert all(r.key_result for r in results), "every notebook prints a key result"
    assert any(line.startswith(f"[{len(IDS)}/{len(IDS)}]") for line in lines)
    assert (tmp_path / NOTEBOOKS[0].name).is_file()
    by_name = {r.name: r for r in results}
    if "01_model_structure" in by_name:
        assert "11,689,512" in by_name["01_model_structure"].key_result
    if "02_trainable_layers" in by_name:
        assert "head 1,026 / last_stage 8,394,754 / all 11,177,538" in by_name["02_trainable_layers"].key_result


def test_own_images_notebooks_on_another_dataset(tmp_path, monkeypatch):
    """03-08 with data_dir: three classes, none of them ants or bees, another image size, on MobileNetV2."""
    from conftest import make_image_folder

    classes = ("cherry", "oak", "willow")
    folder = make_image_folder(tmp_path / "leaves", classes=classes, per_class={"train": 10, "val": 6},
                               size=(72, 56))
    monkeypatch.setenv("TLCOURSE_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    # the other architecture too (MobileNetV2, random weights): one smoke run checks both
    results = run_course(folder=ROOT / "notebooks", output=tmp_path / "out", smoke=True,
                         only=["03", "04", "05", "06", "07", "08"],
                         overrides={"data_dir": str(folder), "arch": "mobilenet_v2"}, echo=lambda line: None)
    assert [r.status for r in results] == ["ok"] * 6, [r.error for r in results]
    check_claims(tmp_path / "out", results, "mobilenet_v2")
    assert results[4].key_result.startswith("leaves: 3 classes")
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   for name in (r.name for r in results)
                   for c in nbformat.read(tmp_path / "out" / f"{name}.ipynb", 4).cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert all(name in text for name in classes) and "ants" not in text and "bees" not in text


# --------------------------------------------------------------------------- what the executed course says

VERDICT = re.compile(r"\b(better|beats?|worse|winner|indistinguishable|paid)\b", re.IGNORECASE)


def _texts(cell) -> list[str]:
    """What a reader sees of a cell: its markdown, or its code's printed and displayed outputs."""
    if cell.cell_type == "markdown":
        return [cell.source]
    out = []
    for o in cell.get("outputs", []):
        out.append(str(o.get("text", "")))
        data = o.get("data", {})
        out += [str(data.get("text/markdown", "")), str(data.get("text/plain", ""))]
    return out


def foreign_blocks(arch: str) -> re.Pattern:
    """Block names of the other architectures in ``tlcourse.archs`` that ``arch``'s model does not have."""
    from tlcourse.archs import ARCHS
    from tlcourse.freeze import blocks
    from tlcourse.models import build_model

    own = set(blocks(build_model(arch, num_classes=2, weights=None)))
    others = set()
    for name in ARCHS:
        if name != arch:
            others |= set(blocks(build_model(name, num_classes=2, weights=None))) - own
    words = {"classifier"} & others          # an English word too: only `classifier` in code style counts
    names = [re.escape(n) for n in sorted(others - words, key=len, reverse=True)] + [f"`{w}`" for w in words]
    return re.compile(r"(?<![\w.])(" + "|".join(names) + r")(?![\w])")


def check_claims(folder: Path, results, arch: str) -> None:
    """The executed notebooks name only blocks the model has; every verdict carries its paired test;
    every comparison table shows each setting, as a column (it differs) or under 'same in every row'."""
    from tlcourse.compare import SETTINGS

    foreign = foreign_blocks(arch)
    for result in results:
        nb = nbformat.read(folder / f"{result.name}.ipynb", 4)
        for cell in nb.cells:
            for text in _texts(cell):
                hit = foreign.search(text)
                where = text[max(0, hit.start() - 80):hit.end() + 40] if hit else ""
                assert hit is None, f"{result.name} ({arch}) names {hit.group(0)!r}: ...{where}"
                if cell.cell_type != "code":
                    continue
                for line in text.splitlines():
                    if VERDICT.search(line):
                        assert "McNemar p =" in line, f"{result.name}: a verdict without its paired test: {line}"
                lines = text.splitlines()
                for i, line in enumerate(lines):
                    if line.startswith("strategy ") and "best val_acc" in line:
                        same = next((x for x in lines[i:] if x.startswith("same in every row:")), "")
                        missing = [s for s in SETTINGS if s not in line and f" {s} " not in same + " "]
                        assert not missing, f"{result.name}: the comparison table hides {missing}"


def test_nbval_on_committed_notebooks(tmp_path):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--rootdir", str(tmp_path), *map(str, NOTEBOOKS)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(**{ENV_WEIGHTS: "none", ENV_SMOKE: "1"}),
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_feature_extraction_notebook_full_size_with_pretrained_mobilenet(hymenoptera_dir, mobilenet_weights,
                                                                         tmp_path, monkeypatch):
    """Notebook 03 as a classroom without ResNet weights runs it: MobileNetV2 + local backbone."""
    import re

    monkeypatch.setenv("TLCOURSE_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    (result,) = run_course(folder=ROOT / "notebooks", output=tmp_path, only=["03"], check_weights=False,
                           overrides={"arch": "mobilenet_v2", "weights": str(mobilenet_weights)}, echo=print)
    assert result.status == "ok", result.error
    best = float(re.search(r"best val_acc (\d\.\d+)", result.key_result).group(1))
    print(result.key_result)
    assert best >= 0.92, result.key_result
    assert "mobilenet_v2 mobilenet_v2_imagenet_backbone.pth" in result.key_result
