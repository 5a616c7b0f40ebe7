"""The figures of the theory, redrawn by the library: one module per figure, each run from the
repository root as `python -m experiments.figures.<name> --out DIR`, and all of them by
`python -m experiments.figures.make_all --out DIR` (shared plumbing: `experiments.figures._common`)."""
