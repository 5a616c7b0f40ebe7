"""The package as a user installs it: a (non-editable) wheel built from the repository carries the
pretrained networks and the type marker, and, installed into a folder of its own, imports, loads a
pretrained network and samples from outside the repository."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_samples_outside_the_repository(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                            str(ROOT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("diffjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("diffjax/py.typed", "diffjax/weights/mnist_fm.npz", "diffjax/weights/mnist_fm.json",
                     "diffjax/solvers/__init__.py"):  # fmt: skip
        assert required in names, required
    assert not any(n.startswith(("tests/", "experiments/")) for n in names)
    install = subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    script = (
        "import jax, diffjax as dj\n"
        f"assert dj.__file__.startswith({str(site)!r}), dj.__file__\n"
        "t = dj.load_pretrained('mnist_fm')\n"
        "x = dj.sample('euler', t.model, t.process, jax.random.key(0), (2, 28, 28, 1), 2).samples\n"
        "print(x.shape, dj.__version__, sorted(dj.available_pretrained()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2, 28, 28, 1)" in proc.stdout and "mnist_fm" in proc.stdout
