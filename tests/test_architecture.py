"""The shape of the code, checked: one integrator, capabilities instead of class checks, a library
that never reaches up into experiments, no `sys.path` edits, and a light core import."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import diffjax.processes as processes

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "diffjax"
PROJECT_FILES = [p for d in ("diffjax", "experiments", "tests", "bench", "notebooks")
                 for p in (ROOT / d).rglob("*.py")]  # fmt: skip

# Loops over time that are not integrations of a term over a grid, with the reason they stay.
NOT_INTEGRATIONS = {
    ("diffjax/solvers/predictor_corrector.py", "lax.scan"): "the corrector's Langevin iterations at one time",
    ("diffjax/likelihood.py", "lax.scan"): "the sum of the DDPM chain's T bound terms",
}
DRIVERS = {("diffjax/solvers/base.py", "lax.scan"), ("diffjax/solvers/adaptive.py", "diffrax.diffeqsolve")}


def calls(path: Path):
    """Dotted names of every call in a file (e.g. 'jax.lax.scan' → 'lax.scan' suffix matches)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func)


def test_one_integrator_runs_every_loop_over_time():
    found = set()
    for path in LIBRARY.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        for name in calls(path):
            for loop in ("lax.scan", "diffrax.diffeqsolve"):
                if name.endswith(loop):
                    found.add((rel, loop))
    assert found - set(NOT_INTEGRATIONS) == DRIVERS, found


def test_no_isinstance_on_a_concrete_process_outside_its_module():
    classes = {name: inspect.getmodule(obj).__name__ for name, obj in vars(processes).items()
               if inspect.isclass(obj) and issubclass(obj, processes.GaussianProcess)}  # fmt: skip
    offenders = []
    for path in [p for p in PROJECT_FILES if not p.is_relative_to(ROOT / "tests")]:  # tests check types
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance" and node.args[1:]:
                parts = [n for n in ast.walk(node.args[1]) if isinstance(n, ast.Name | ast.Attribute)]
                named = {n.id if isinstance(n, ast.Name) else n.attr for n in parts}
                for cls in named & set(classes):
                    if classes[cls] != module and cls != "GaussianProcess":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} isinstance(..., {cls})")
    assert not offenders, offenders


def test_no_sys_path_edits_and_the_library_never_imports_experiments():
    for path in PROJECT_FILES:
        tree = ast.parse(path.read_text())
        uses = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
                and isinstance(n.value, ast.Name) and n.value.id == "sys"]  # fmt: skip
        assert not uses, f"{path.relative_to(ROOT)}:{uses} uses sys.path"
        if path.is_relative_to(LIBRARY):
            imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
            names = [a.name for n in imports for a in n.names]
            names += [n.module or "" for n in imports if isinstance(n, ast.ImportFrom)]
            assert not any(n.split(".")[0] == "experiments" for n in names), path


def test_the_core_import_is_light():
    heavy = ("orbax", "tensorboardX", "matplotlib", "tensorflow_datasets", "ml_collections", "tqdm")
    code = f"import sys, diffjax; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
