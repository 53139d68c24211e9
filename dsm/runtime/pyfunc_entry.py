"""The MLflow "model from code" of a dsm model (dsm.runtime.mlmodel): MLflow copies this file
into the model and runs it on ``mlflow.pyfunc.load_model``, so loading unpickles nothing."""

import warnings

import mlflow.models

from dsm.runtime.mlmodel import DensityModel

with warnings.catch_warnings(record=True):  # MLflow's type-hint advice (see dsm.runtime.mlmodel)
    mlflow.models.set_model(DensityModel())
