"""Every Python snippet of the README runs as written, every command line it shows names a module and
flags that exist, and each script's commands that read a trained run fail, where none was trained, with
a one-line message naming what is missing.

Python blocks run in order in one fresh interpreter (cwd = the repository root, so `outputs/demo` is
the demo's work directory). A block that loads a trained model needs `make demo`'s work directory: here
it is trained first with a short run of the same config (the README's `make demo` trains 6000 steps).
"""

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang == "bash"]


def bare_env() -> dict:
    """A fresh shell's environment: the repository on the path, nothing else of this process's but
    the compilation cache the tests share (conftest)."""
    cache = {k: v for k, v in os.environ.items() if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    return {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **cache}


def test_the_readme_has_python_and_shell_blocks():
    assert len(PYTHON) >= 3 and len(SHELL) >= 3


def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    demo = tmp_path / "outputs" / "demo"
    from experiments.configs import checkerboard_fm
    from experiments.train import train_and_evaluate

    cfg = checkerboard_fm.get_config()
    cfg.train.update(num_steps=50, warmup_steps=5, checkpoint_every=50)
    cfg.sample.num_samples = 64
    train_and_evaluate(cfg, str(demo))
    script = "\n\n".join(PYTHON)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env=bare_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


def commands():
    for block in SHELL:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            assignment = re.fullmatch(r'\w+="(.*)"', line)  # E="python -m experiments.evaluate ..."
            line = assignment.group(1) if assignment else line
            line = line.replace("$E", "python -m experiments.evaluate").replace("$clip", "--clip_denoised")
            if "-m experiments." in line:
                yield line


@functools.cache
def help_text(module: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("line", list(commands()))
def test_every_command_names_a_module_and_flags_that_exist(line):
    words = shlex.split(line)
    module = words[words.index("-m") + 1]
    flags = sorted({w.split("=")[0] for w in words if w.startswith("--") and not w.startswith("--config.")})
    text = help_text(module)
    assert "usage" in text.lower() or "flags" in text.lower(), text[-2000:]
    for flag in flags:
        name = flag[2:]
        known = f"--{name}" in text or f"--[no]{name}" in text or f"--[no]{name.removeprefix('no')}" in text
        assert known, f"{module} has no flag {flag}"


def needs_a_run() -> dict[str, str]:
    """module → the first README command of it that reads a work directory or file under outputs/
    (made by a training run the README shows)."""
    first = {}
    for line in commands():
        words = shlex.split(line)
        module = words[words.index("-m") + 1]
        if "outputs/" in line and not module.startswith("experiments.train"):  # train* write there
            first.setdefault(module, line)
    return first


@pytest.mark.parametrize("line", list(needs_a_run().values()), ids=list(needs_a_run()))
def test_commands_that_need_a_trained_run_fail_with_a_clear_message(line, tmp_path):
    """Run as written where nothing has been trained (an empty directory): a one-line error naming the
    missing work directory or file and a non-zero status, no traceback."""
    words = shlex.split(line)
    proc = subprocess.run([sys.executable, *words[words.index("-m"):]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=bare_env())  # fmt: skip
    missing = next(w for w in words if w.startswith("outputs/")).split(",")[0]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert missing in proc.stderr + proc.stdout, proc.stderr[-3000:]
