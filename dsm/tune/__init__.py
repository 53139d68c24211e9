"""``dsm tune``: Ray Tune sweeps over training configs (spec -> plan -> trials -> results)."""
