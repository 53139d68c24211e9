"""Statistics over log-probabilities: density summaries and fits, classical baselines, the
paper's studies. Built on the core; no Ray, no MLflow."""
