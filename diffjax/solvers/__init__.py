"""Solvers: small frozen objects with a pure `step`, run by one integrator (`integrate`).

    from diffjax.solvers import DPMSolverPP, Heun, integrate
    sol = integrate(Heun(), term, y0, ts)      # any term: a model's flow, a likelihood, any ODE/SDE

`SOLVERS` maps the names used by configs and `diffjax.sample` to the solver classes.
"""

from diffjax.solvers.adaptive import Adaptive
from diffjax.solvers.ancestral import Ancestral
from diffjax.solvers.base import Solution, Solver, integrate
from diffjax.solvers.ddim import DDIM
from diffjax.solvers.deis import DEIS
from diffjax.solvers.dpm_solver import DPMSolverPP
from diffjax.solvers.dpm_solver_sde import DPMSolverPPSDE
from diffjax.solvers.edm import EDM
from diffjax.solvers.euler_maruyama import EulerMaruyama
from diffjax.solvers.predictor_corrector import PredictorCorrector
from diffjax.solvers.runge_kutta import RK4, Euler, Heun, Midpoint, RungeKutta, Tableau
from diffjax.solvers.sa_solver import SASolver
from diffjax.solvers.terms import ODE, SDE, Langevin
from diffjax.solvers.unipc import UniPC

SOLVERS = {
    # probability-flow ODE
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "rk4": RK4,
    "ddim": DDIM,  # eta = 0 deterministic; eta > 0 stochastic
    "dpm_solver_pp": DPMSolverPP,
    "unipc": UniPC,  # predictor-corrector multistep (corrector free: reuses the next evaluation)
    "deis": DEIS,
    "tsit5": lambda **kw: Adaptive(method="tsit5", **kw),
    "dopri5": lambda **kw: Adaptive(method="dopri5", **kw),
    # stochastic
    "euler_maruyama": EulerMaruyama,
    "ancestral": Ancestral,
    "pc": PredictorCorrector,
    "edm": EDM,  # s_churn = 0: EDM's deterministic Heun in σ/α
    "dpm_solver_pp_sde": DPMSolverPPSDE,  # SDE-DPM-Solver++ 2M
    "sa_solver": SASolver,  # stochastic Adams predictor-corrector (tau = 0: deterministic)
}
"""Solver names of configs, `diffjax.sample` and the CLIs → solver classes."""

__all__ = [
    "DEIS", "EDM", "ODE", "RK4", "SDE", "SOLVERS", "Adaptive", "Ancestral", "DDIM", "DPMSolverPP",
    "DPMSolverPPSDE", "Euler", "EulerMaruyama", "Heun", "Langevin", "Midpoint", "PredictorCorrector",
    "RungeKutta", "SASolver", "Solution", "Solver", "Tableau", "UniPC", "integrate",
]  # fmt: skip
