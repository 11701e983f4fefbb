"""Entry file of the pyfunc model (MLflow "models from code"): MLflow executes this file when
it loads the model, so the model is rebuilt from code and artifacts, never unpickled.
Nothing else imports it."""

import mlflow

from cmt.serving import PolicyModel

mlflow.models.set_model(PolicyModel())
