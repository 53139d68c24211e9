"""The MLflow "model from code" of a dsm model (dsm.runtime.mlmodel): MLflow copies this file
into the model and runs it on ``mlflow.pyfunc.load_model``, so loading unpickles nothing."""

import warnings

import mlflow.models
import mlflow.pyfunc

from dsm.runtime.mlmodel import BUNDLE_KEY, COLUMNS

BATCH = 256  # images per forward pass in predict

# MLflow advises type hints on predict when the class is made (and on save and load), under its own
# "once" filter; the model's signature is what validates inputs here. record=True keeps the advice
# from the console (MLflow's filter cannot be overridden, but the recorder is inherited).
with warnings.catch_warnings(record=True):
    class DensityModel(mlflow.pyfunc.PythonModel):
        """The pyfunc face of a bundle (dsm.runtime.mlmodel's docstring)."""

        def load_context(self, context) -> None:
            from dsm.api import load

            self.model = load(context.artifacts[BUNDLE_KEY])

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd
            import torch

            x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)).reshape(-1, *self.model.shape)
            if not len(x):
                return pd.DataFrame(np.zeros((0, len(COLUMNS))), columns=list(COLUMNS))
            out = torch.stack([self.model.log_prob(x, batch_size=BATCH), self.model.nll(x, batch_size=BATCH),
                               self.model.energy(x, 0.0, batch_size=BATCH).double()], dim=1)
            return pd.DataFrame(out.numpy(), columns=list(COLUMNS))

    mlflow.models.set_model(DensityModel())
