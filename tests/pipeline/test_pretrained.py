"""The bundled Morpho-MNIST pipeline loads offline from package data and answers a query."""
import torch

from pipeline.core import CounterfactualPipeline


def test_bundled_pipeline_answers_a_query():
    pipe = CounterfactualPipeline.pretrained()
    assert pipe.graph.image_parents() == ["thickness", "intensity", "digit"]
    assert pipe.classifier is not None
    x = torch.full((2, 1, 28, 28), -1.0)
    x[:, :, 8:20, 12:16] = 0.5  # a crude vertical stroke
    a = {"thickness": torch.tensor([2.5, 3.0]), "intensity": torch.tensor([190.0, 200.0]),
         "digit": torch.tensor([1, 1])}
    res = pipe.counterfactual(x, a, do={"digit": 7}, steps=3, seed=0)
    assert res.image.shape == x.shape and torch.isfinite(res.image).all()
    assert res.groups == [["digit"], ["thickness", "intensity"]]
    assert res.weights == [pipe.config.default_scale(["digit"]), 1.0]
