"""diffjax experiments: configs plus thin scripts that call into the library. Run from the repository
root as modules, e.g.

    python -m experiments.train --config experiments/configs/checkerboard_fm.py --workdir outputs/demo
    python -m experiments.sample --workdir outputs/demo --sampler dpm_solver_pp --steps 10

`experiments.train.train_and_evaluate(config, workdir)` is importable (the tests call it in-process).
"""

from diffjax.xla_cpu import configure_xla_cpu

# Before any script starts JAX's backend: XLA's own CPU convolutions (diffjax/xla_cpu.py explains).
configure_xla_cpu()
