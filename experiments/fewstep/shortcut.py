"""Shortcut models from scratch on the 2D ring, sampled in 1, 2 and 4 evaluations (CondOT and VP).

    python -m experiments.fewstep.shortcut [--num_steps 4000] [--process condot|vp]

Training: `diffjax.shortcut.shortcut_loss` (flow matching on the diagonal u(x, t, t) for 3/4 of each
batch, the flow map's self-consistency at dyadic steps down to 1/128 of the axis for the rest), on the
same two-time network as MeanFlow (`common.make_network(second_time=True)`, time_scale 1), adam 2e-3
with cosine decay, EMA 0.999 evaluated; sampled by `flow_map_sample(AverageVelocityMap(net, process))`
on uniform grids (the levels it was trained on). Rows (`experiments.fewstep.common`): method
'shortcut', variant 'from scratch', with final_loss.
"""

from __future__ import annotations

import functools

from diffjax.shortcut import shortcut_loss
from experiments.fewstep import common
from experiments.fewstep.meanflow import flow_map_rows


def run(problem: common.Problem, num_steps: int = 4000, seed: int = 0, batch_size: int = 512,
        max_steps: int = 128, bootstrap_fraction: float = 0.25) -> list[dict]:  # fmt: skip
    """The rows of a shortcut model trained num_steps from scratch on `problem` (module docstring)."""
    network = common.make_network(seed, second_time=True, time_scale=1.0)
    loss = functools.partial(_loss, process=problem.process, max_steps=max_steps,
                             bootstrap_fraction=bootstrap_fraction)  # fmt: skip
    trained, losses, wall = common.train(network, loss, problem.data_batch(batch_size), num_steps=num_steps,
                                         seed=seed)  # fmt: skip
    return flow_map_rows(lambda x, t, s: trained(x, t, s=s), problem, "shortcut", "from scratch",
                         train_wall_s=wall, train_steps=num_steps, final_loss=float(losses[-250:].mean()))


def _loss(network, x0, key, **kwargs):
    return shortcut_loss(lambda x, t, s: network(x, t, s=s), x0, key, **kwargs)


def main(argv=None) -> list[dict]:
    args = common.parser(__doc__, default_steps=4000).parse_args(argv)
    return common.run_processes(run, args)


if __name__ == "__main__":
    main()
