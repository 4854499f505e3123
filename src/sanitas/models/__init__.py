"""Reference models, their training, and the checkpoint cache.

>>> from sanitas.models import build_model, train
>>> net = build_model("cnn")                       # untrained
>>> trained = train("cnn", "fashion-mnist")        # trained (cached after the first call)
"""

from sanitas.models.architectures import (AlexNet1, LinearModel, MLP, PaperCNN, ResNetSmall, SumPoolConv,
                                          VGGSmall)
from sanitas.models.resolve import load_model
from sanitas.models.train import TrainedModel, accuracy, permute_labels, train, training_config
from sanitas.models.zoo import MODELS, ModelSpec, build_model, model_names

__all__ = ["AlexNet1", "LinearModel", "MLP", "PaperCNN", "ResNetSmall", "SumPoolConv", "VGGSmall", "MODELS",
           "ModelSpec", "build_model", "model_names", "train", "training_config", "TrainedModel", "accuracy",
           "permute_labels", "load_model"]
