"""The math core: energies, losses, noise, normalization, the ODE and sampling, the networks and
the model file. It imports only itself and :mod:`dsm.plumbing`: no Ray, no MLflow, no stage
(tests/test_imports.py)."""
