"""ML inference service: `spark-worker workers.ml_inference:MLInferenceRpcNode`
(service `ml-inference`).

The models ship with the code (`workers/ml_model.json`: logistic regressions with fixed,
standardized weights), so nothing is downloaded and every replica answers the same.
`predict(model_name, features)`: `features` is an object by feature name or a list in the
model's feature order; the answer is `{model, version, probability, label, threshold}`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from spark.errors import InvalidParamsError
from spark.nodes.rpc import RpcNode


@dataclass(frozen=True)
class LogisticModel:
    name: str
    version: str
    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, spec: dict[str, Any]) -> LogisticModel:
        if spec.get("kind") != "logistic_regression":
            raise ValueError(f"model {name!r}: unsupported kind {spec.get('kind')!r}")
        n = len(spec["features"])
        for part in ("means", "scales", "weights"):
            if len(spec[part]) != n:
                raise ValueError(f"model {name!r}: {part} has {len(spec[part])} values, not {n}")
        return cls(
            name=name,
            version=str(spec["version"]),
            features=tuple(spec["features"]),
            means=tuple(map(float, spec["means"])),
            scales=tuple(map(float, spec["scales"])),
            weights=tuple(map(float, spec["weights"])),
            bias=float(spec["bias"]),
            threshold=float(spec.get("threshold", 0.5)),
            description=spec.get("description", ""),
        )

    def vector(self, features: Any) -> list[float]:
        if isinstance(features, dict):
            missing = [f for f in self.features if f not in features]
            if missing:
                raise InvalidParamsError(
                    "missing features", data={"missing": missing, "features": list(self.features)}
                )
            values = [features[f] for f in self.features]
        elif isinstance(features, list) and len(features) == len(self.features):
            values = features
        else:
            raise InvalidParamsError(
                f"features must be an object or a list of {len(self.features)} numbers",
                data={"features": list(self.features)},
            )
        for name, v in zip(self.features, values, strict=True):
            if not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)):
                raise InvalidParamsError("features must be finite numbers", data={"feature": name})
        return [float(v) for v in values]

    def probability(self, features: Any) -> float:
        x = self.vector(features)
        z = self.bias + sum(
            w * (v - m) / s
            for w, v, m, s in zip(self.weights, x, self.means, self.scales, strict=True)
        )
        # Numerically stable logistic function.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    async def predict(self, features: Any) -> dict[str, Any]:
        p = self.probability(features)
        return {
            "model": self.name,
            "version": self.version,
            "probability": round(p, 6),
            "label": p >= self.threshold,
            "threshold": self.threshold,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "features": list(self.features),
            "threshold": self.threshold,
            "description": self.description,
        }


class Models(dict):
    """Model name -> model; an unknown name is an invalid-params error, not a crash."""

    def __missing__(self, name: Any) -> LogisticModel:
        raise InvalidParamsError("unknown model", data={"model_name": name, "models": sorted(self)})


def load_models(text: str | None = None) -> Models:
    if text is None:
        text = resources.files(__package__).joinpath("ml_model.json").read_text()
    specs = json.loads(text)
    return Models({name: LogisticModel.from_dict(name, spec) for name, spec in specs.items()})


class MLInferenceRpcNode(RpcNode):
    """Machine learning inference service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = load_models()

    async def rpc_predict(self, params, context):
        """Run ML model prediction."""
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object")
        model_name = params.get("model_name")
        if not isinstance(model_name, str):
            raise InvalidParamsError(
                "model_name must be a string", data={"models": sorted(self.models)}
            )
        features = params.get("features")
        model = self.models[model_name]
        return await model.predict(features)

    async def rpc_list_models(self, params, context):
        """The models this service answers for, with their features."""
        return [model.describe() for model in self.models.values()]
