"""Timing shared by the peer comparisons (`bench_unet.py`, `bench_dit.py`): diffjax's train step
compiled ahead, and the paired rounds that time the libraries' calls in one process.

  * `compile_jax`: `lower(...).compile()` of a jitted function, its seconds and the FLOP count of
    XLA's `cost_analysis()` (used for every library's achieved FLOP/s: the architectures match);
  * `JaxTrainStep`: one jitted step (split the key, value and gradient of the loss, optimizer
    update) on (params, opt_state, key), all three donated, compiled ahead;
  * `LibraryResult`: the start of a library's results (name, parameter count);
  * `first_call`: the seconds of one (the first) call;
  * `paired_rounds`: warm-up calls, then rounds that time each library's calls back to back;
  * `paired_ratio` / `format_paired_ratio`: the median [min, max] over rounds of the ratio of the
    two times of a round. A slow spell of the machine hits both calls of a round, so it is steadier
    than the ratio of the medians (see `machine.py` for the load, threads and spread).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import optax
from flax import nnx


@dataclass
class Compiled:
    """A compiled jax program, its compile time (lower + compile) and XLA's FLOP count."""

    fn: Callable
    compile_s: float
    flops: float


def compile_jax(jitted, *args) -> Compiled:
    """`jitted.lower(*args).compile()`, timed, with the FLOPs of XLA's `cost_analysis()` (nan if none)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return Compiled(compiled, compile_s, float((cost or {}).get("flops", float("nan"))))


class JaxTrainStep:
    """Plain step (loss, gradient, optimizer update) on (params, opt_state, key), all donated, of
    `model_loss(model, x, key)` on the fixed batch `x`; compiled in the constructor (`compiled`).
    Subclasses define `model_loss` and set what it reads before calling this constructor. A call
    runs one step and returns its loss."""

    def __init__(self, model: nnx.Module, optimizer: optax.GradientTransformation, x: jax.Array):
        self.graphdef, params = nnx.split(model)
        self.optimizer, self.x = optimizer, x
        self.carry = (params, self.optimizer.init(params), jax.random.key(0))
        jitted = jax.jit(self._step, donate_argnums=(0, 1, 2))
        self.compiled = compile_jax(jitted, *self.carry, x)

    def model_loss(self, model: nnx.Module, x: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def loss(self, params, x, key):
        return self.model_loss(nnx.merge(self.graphdef, params), x, key)

    def _step(self, params, opt_state, key, x):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(self.loss)(params, x, sub)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    def __call__(self):
        *self.carry, loss = self.compiled.fn(*self.carry, self.x)
        jax.block_until_ready(loss)
        return loss


@dataclass
class LibraryResult:
    """What every library's results start with (the JSON keys `library`, `params`); each script's
    `Result` adds its timings."""

    library: str
    params: int


def first_call(fn) -> float:
    """Seconds of one call of `fn`."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired_rounds(fns: dict[str, Callable], warmup: int, rounds: int, steps: int = 1, *,
                  alternate: bool = False, unit: str = "ms") -> dict[str, list[float]]:  # fmt: skip
    """`warmup` untimed calls of each, then `rounds` rounds timing `steps` consecutive calls of each
    library in turn, in the order of `fns` (`alternate`: reversed every other round, so that no
    library always goes first). Prints each round's time per call in `unit` (beyond 20 rounds, every
    10th round's). Returns the seconds of each round, per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[::-1] if alternate and r % 2 else order:
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            times[name].append(time.perf_counter() - t0)
        if rounds <= 20 or (r + 1) % 10 == 0:
            print(f"    round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {1e3 * ts[-1] / steps:.0f} {unit}" for n, ts in times.items()), flush=True)  # fmt: skip
    return times


def paired_ratio(slow_times: list[float], fast_times: list[float]) -> tuple[float, float, float]:
    """(median, min, max) over rounds of time_a / time_b for the calls timed in the same round (nan
    without rounds): slow spells of the machine hit both calls of a round, so the paired ratio is
    steadier than the ratio of the two medians."""
    ratios = [a / b for a, b in zip(slow_times, fast_times, strict=True)]
    return (statistics.median(ratios), min(ratios), max(ratios)) if ratios else (float("nan"),) * 3


def format_paired_ratio(slow_times: list[float], fast_times: list[float]) -> str:
    """`paired_ratio` as 'median× [min, max]', or '—' without rounds."""
    med, lo, hi = paired_ratio(slow_times, fast_times)
    return "—" if med != med else f"{med:.2f}× [{lo:.2f}, {hi:.2f}]"
