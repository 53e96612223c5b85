"""The command-line contract: bad input is one line on stderr and exit code 2, never a traceback;
`sftreport` and `python -m sftreport` are the same command; render and schema need no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli

from sftreport.cli import main


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    (d / "bad.toml").write_text("epochs = [\n")
    (d / "typo.toml").write_text("epocs = 3\n")
    (d / "empty").mkdir()
    return d


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--epochs", "zero"], "invalid int value"),
        (["run", "--epochs", "0"], "epochs"),
        (["run", "--optimizer", "rmsprop"], "optimizer"),
        (["run", "--device", "tpu"], "device"),
        (["run", "--strategy", "half"], "strategy"),
        (["run", "--out", "report.docx"], "extension"),
        (["run", "--dataset", "cifar10"], "--data-root"),
        (["run", "--dataset", "cifar10", "--data-root", "/nonexistent"], "CIFAR-10 not found"),
        (["run", "--dataset", "imagefolder", "--data-root", "{bad}/empty"], "train"),
        (["run", "--weights", "{bad}/missing.pt"], "not found"),
        (["run", "--weights", "{bad}/garbage.pt"], "cannot read weights file"),
        (["run", "--model", "resnet9000"], "unknown model"),
        (["run", "--model", "resnet18", "--weights", "IMAGENET9K"], "unknown weights"),
        (["run", "--config", "{bad}/nope.toml"], "config file not found"),
        (["run", "--config", "{bad}/bad.toml"], "not valid TOML"),
        (["run", "--config", "{bad}/typo.toml"], "epocs"),
        (["run", "--strategy", "freeze-until:nosuch"], "no module 'nosuch'"),
        (["run", "--batch-size", "4096"], "fewer than --batch-size"),
        (["run", "--activations", "layer9"], "layer9"),
        (["render", "{bad}/empty", "--out", "x.html"], "run.json"),
        (["render", "{bad}", "--out", "x.docx"], "unknown report format"),
        (["render", "{bad}/empty", "--out", "{bad}/garbage.pt/x.html"], "cannot write"),
        (["run", "--out", "{bad}/garbage.pt/sub/report.md"], "cannot write"),
        (["run", "--model", "alexnet", "--weights", "none"], "cannot run on inputs of shape [3, 32, 32]"),
        (["run", "--model", "vit_b_16", "--weights", "none", "--image-size", "32"], "cannot run on inputs"),
        (["pretrain", "--epochs", "0"], "at least 1"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, bad_files: Path, tmp_path: Path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)  # nothing a failed run writes lands in the repository
    line = _one_line_error(capsys, [a.replace("{bad}", str(bad_files)) for a in argv])
    assert needle in line


def test_bad_input_in_a_real_process_has_no_traceback(bad_files: Path, tmp_path: Path):
    r = cli("run", "--weights", str(bad_files / "garbage.pt"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and r.stderr.startswith("sftreport: error:")


def test_a_plain_pickle_as_weights_is_one_line_without_torch_s_warning(tmp_path: Path):
    """torch.load warns about the pickle protocol before it fails: that warning is not the user's line."""
    import pickle

    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump({"layer.weight": [1.0, 2.0]}, f, protocol=4)
    r = cli("run", "--weights", str(tmp_path / "plain.pt"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()] and "cannot read weights file" in r.stderr, r.stderr
    assert "Warning" not in r.stderr


def test_render_without_out_writes_into_the_run_directory(tmp_path: Path):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent / "report"))
    from synthetic_run import build_run

    run = build_run(tmp_path / "run", epochs=2)
    r = cli("render", str(run))
    assert r.returncode == 0, r.stderr
    assert (run / "report.html").stat().st_size > 100_000 and f"report: {run / 'report.html'}" in r.stdout


def test_python_dash_m_and_the_console_script_are_the_same_command():
    script = shutil.which("sftreport", path=str(Path(sys.executable).parent))
    assert script, "the sftreport console script is installed next to this Python"
    a = subprocess.run([script, "--version"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "sftreport", "--version"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "sftreport" in a.stdout
    h1 = subprocess.run([script, "run", "--help"], capture_output=True, text=True).stdout
    h2 = subprocess.run([sys.executable, "-m", "sftreport", "run", "--help"], capture_output=True, text=True).stdout
    assert h1 == h2 and "--strategy" in h1


def test_schema_prints_json_schema_without_torch():
    code = (
        "import sys, io, contextlib; from sftreport.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf): rc = main(['schema'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]\n"
        "print(buf.getvalue())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert "EpochSnapshot" in json.dumps(schema)


def test_the_readme_s_article_command_is_the_article_s_setup():
    """SGD, learning rate 0.001, momentum 0.9, constant, 10 epochs, batches of 100, 224 px, ImageNet weights."""
    import re

    from sftreport.cli import _overrides, build_parser
    from sftreport.config import build_config

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(r"<!-- article-command -->\s*```bash\n(.*?)```", text, re.S)
    assert m, "the README shows the article's command"
    argv = m.group(1).replace("\\\n", " ").split()
    assert argv[:2] == ["sftreport", "run"]
    cfg = build_config(None, _overrides(build_parser().parse_args(argv[1:])))
    assert (cfg.model, cfg.weights, cfg.dataset) == ("resnet50", "IMAGENET1K_V1", "cifar10")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.scheduler) == ("sgd", 0.001, 0.9, "constant")
    assert (cfg.epochs, cfg.batch_size, cfg.image_size, cfg.weight_decay) == (10, 100, 224, 0.0)
