"""The 2D few-step pipeline (experiments.fewstep) end to end in a tiny configuration: consistency
distillation trained for 30 steps and scored on 256 noise draws (one evaluation, then multistep
consistency sampling with the implied noise) writes rows of the one format, the table reads them
back, and the exact consistency function run through the same samplers and metric scores 0 at one
evaluation; continuous-time consistency training (sCT, with its warm-up) and sCM's recipe (a trained
flow distilled into its own one-step jump) run through the same loop (the pipeline check: the metric
compares like with like)."""

from __future__ import annotations

import jax
import numpy as np

from experiments.fewstep import common, consistency, table


def test_consistency_pipeline_writes_rows_and_the_exact_map_scores_zero(tmp_path):
    problem = common.make_problem("condot", num_eval=256)
    assert np.asarray(problem.z).shape == (256, 2)
    exact = common.endpoint_metrics(problem.reference, problem, nfe=1)
    assert exact["median"] == 0.0 and exact["rmse"] == 0.0
    log_p = np.asarray(jax.jit(problem.mixture.log_prob)(problem.reference))
    assert abs(exact["log_p_gap"]) < 5 * log_p.std() / 2 / np.sqrt(log_p.size)  # 5 standard errors (≈ 0.03)

    rows = consistency.run(problem, num_steps=30, batch_size=128, methods=("cd", "sct", "scd_flow"),
                           modes=("implied noise",), scm_warmup=0.5)  # sCT's warm-up factor: a float32
    path = str(tmp_path / "results.jsonl")
    common.append_rows(rows, path)
    back = common.read_rows(path)
    assert back == rows
    for r in back:
        assert tuple(r)[: len(common.ROW_KEYS)] == common.ROW_KEYS
        assert r["problem"] == "ring2d" and r["process"] == "condot" and r["nfe"] in common.NFES
        assert np.isfinite([r["median"], r["rmse"], r["log_p_gap"]]).all()
    cd = [r for r in back if r["method"] == "consistency"]
    variants = ["CD (Heun, N=18, l2), implied noise", "flow network's own jump (sCD's start), implied noise",
                "sCD from and by a trained flow (time scale 100), warm-up 0.5, adaptive weight, "
                "implied noise",
                "sCT, warm-up 0.5, adaptive weight, implied noise"]
    assert sorted((r["variant"], r["nfe"]) for r in cd) == [(v, k) for v in variants for k in common.NFES]
    assert all(r["train_steps"] in (30, 60) and r["train_wall_s"] > 0 for r in cd)
    assert all(r["median"] > 0.01 for r in cd)  # 30 steps do not learn the map
    oracle = {(r["variant"], r["nfe"]): r for r in back if r["method"] == "oracle"}
    assert oracle[("exact f*, implied noise", 1)]["median"] == 0.0
    assert oracle[("exact f*, implied noise", 1)]["rmse"] == 0.0
    assert oracle[("exact f*, implied noise", 4)]["median"] > 0.1  # re-noising leaves z's trajectory
    text = table.markdown(back, "condot")
    assert "| consistency | CD (Heun, N=18, l2), implied noise |" in text
    assert "| oracle | exact f*, implied noise | 0.000 / 0.000 |" in text
