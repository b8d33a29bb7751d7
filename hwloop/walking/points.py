"""The work of one Walking Noise point: plain functions of (job, key) that any process can run.

A point's numbers depend only on the sweep's settings and its own key (seed,
site, sigma index, repeat), never on the process or the order it runs in, so
the sweep may run points here or ship them to Dask workers
(``hwloop.walking.sweep``).  ``EvalJob`` evaluates an ONNX model under noise;
``TrainJob`` trains a torch model per point (after one clean model per repeat).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..data import Dataset, load_data

if TYPE_CHECKING:
    from .sweep import SweepSettings


def train_spec(spec: str) -> str:
    """The training split of a data spec (``digits@500`` -> ``digits+train@500``)."""
    if "+train" in spec:
        return spec
    m = re.match(r"^(.*?)(@\d+)?$", spec)
    return f"{m[1]}+train{m[2] or ''}"


def point_seed(*key: int) -> int:
    """A 63-bit seed from a key of non-negative integers (order-independent of execution)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# -- the work of one point: plain functions of (job, key) so any process can run them ----------
_CACHE: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    """One object per process and key (the clean activations of a model, a data set)."""
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


@dataclass(frozen=True)
class EvalJob:
    """Evaluation-only points on an ONNX model (given as bytes, so remote workers need no file)."""

    settings: SweepSettings
    model: bytes
    sha256: str

    def evaluator(self):
        import onnx

        from .evaluate import SiteModel

        def build():
            model = SiteModel(onnx.load_from_string(self.model))
            data = load_data(self.settings.data)
            return model, data, model.clean(data.x)
        return _cached(f"eval:{self.sha256}:{self.settings.data}", build)


def eval_point(job: EvalJob, site: int, sigma_index: int, repeat: int) -> dict:
    """Accuracy of the ONNX model with noise at ``site`` (all sites in global mode)."""
    from .evaluate import accuracy

    model, data, cache = job.evaluator()
    s = job.settings
    rng = np.random.default_rng([s.seed, site, sigma_index, repeat])
    logits = model.run(s.noise_at(site, s.sigmas[sigma_index], len(model.sites)), rng, cache=cache)
    return {"accuracy": accuracy(logits, data.y)}


@dataclass(frozen=True)
class TrainJob:
    """Noisy-training points of a torch model definition."""

    settings: SweepSettings

    def data(self) -> tuple[Dataset, Dataset]:
        s = self.settings
        return _cached(f"data:{s.data}:{s.train_data}",
                       lambda: (load_data(s.train_data or train_spec(s.data)), load_data(s.data)))

    def net(self, repeat: int):
        """A fresh model for ``repeat``: the same initial weights for every point of that repeat."""
        from .train import NoisyNet, build_model

        train, test = self.data()
        s = self.settings
        module, in_shape = build_model(s.model_def, train.x.shape[1], test.n_classes, point_seed(s.seed, repeat))
        return NoisyNet(module, in_shape)

    def warm_up(self) -> None:
        """Pay this process's one-time costs (imports, data loading, torch's first optimiser
        step, several seconds) before timing anything."""
        from .train import TrainConfig, train

        train(self.net(0), self.data()[0].head(256), TrainConfig(epochs=1), 0, 0)

    def config(self):
        from .train import TrainConfig

        s = self.settings
        return TrainConfig(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, clamp=s.clamp)


def _diagnose(net, test: Dataset, seed: int) -> dict:
    from .diagnostics import binarization, weight_magnitude
    from .train import evaluate

    _, acts = evaluate(net, test, {}, seed, capture=True)
    return {"weight_mag": weight_magnitude(net),
            "binarization": np.array([binarization(acts[k]) for k in sorted(acts)])}


def clean_point(job: TrainJob, repeat: int) -> dict:
    """Train the clean model of ``repeat`` (no noise): its checkpoint, accuracy and diagnostics."""
    from .train import evaluate, state_vector, train

    train_data, test = job.data()
    s = job.settings
    net = job.net(repeat)
    train(net, train_data, job.config(), point_seed(s.seed, repeat, 1), point_seed(s.seed, repeat, 2))
    acc, _ = evaluate(net, test, {}, 0)
    return {"repeat": repeat, "clean_state": state_vector(net), "clean_accuracy": acc,
            **{f"clean_{k}": v for k, v in _diagnose(net, test, 0).items()}}


def train_point(job: TrainJob, site: int, sigma_index: int, repeat: int, clean_state: np.ndarray) -> dict:
    """One point: the clean checkpoint under noise (evaluation only), then a model trained with it."""
    from .train import evaluate, load_state_vector, train

    train_data, test = job.data()
    s = job.settings
    net = job.net(repeat)
    noise_at = s.noise_at(site, s.sigmas[sigma_index], len(net.sites))
    eval_seed = point_seed(s.seed, site, sigma_index, repeat, 0)
    load_state_vector(net, clean_state)
    acc_eval_only, _ = evaluate(net, test, noise_at, eval_seed)
    net = job.net(repeat)
    net.noise_at = noise_at
    train(net, train_data, job.config(), point_seed(s.seed, repeat, 1),
          point_seed(s.seed, site, sigma_index, repeat, 1))
    acc, _ = evaluate(net, test, noise_at, eval_seed)
    net.noise_at = {}
    return {"accuracy_eval_only": acc_eval_only,
            **_diagnose(net, test, 0), "accuracy": acc}
