"""Few-step generation on the 2D ring: consistency models, MeanFlow, reflow and progressive
distillation, each against the exact flow map from the same noise (`common`), one table (`table`).

    python -m experiments.fewstep.<consistency|meanflow|reflow|progressive> [--num_steps N] [--process P]
    python -m experiments.fewstep.table
"""
