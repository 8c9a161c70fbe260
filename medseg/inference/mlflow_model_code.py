"""The MLflow "models from code" file of medseg's logged models (see :mod:`medseg.inference.pyfunc`):
MLflow runs it when loading the model, and it names the model object. Do not import it elsewhere."""
import mlflow

from medseg.inference.pyfunc import MedsegPyfuncModel

mlflow.models.set_model(MedsegPyfuncModel())
