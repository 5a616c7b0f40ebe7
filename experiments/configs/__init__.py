"""Experiment configs (ml_collections): `base.get_config()` states every key with its default; the
others start from it (or from a sibling) and change values only, so a config cannot carry a key that
nothing reads (`experiments.builders.validate_config` rejects unknown keys and bad values)."""
