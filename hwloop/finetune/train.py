"""The fine-tuning loop: Adam on the analog layers, a checkpoint after every step, a before/after report.

Modes: ``hil`` (forward on the devices, backward through the twin at the
chip's operating point), ``twin`` (the twin alone, its noise drawn: noise-aware
training against the calibrated profile, no chip in the loop) and ``ideal``
(the same training through the noise-free software model: no adaptation, a
control for the extra epochs).  Batch order is keyed by (seed, epoch) and
every random draw by the step number, so a resumed run computes exactly what
an uninterrupted one does on keyed devices (the emulator).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset, load_data
from ..devices import Device
from ..errors import DeviceError, HwloopError
from ..files import atomic_path
from ..graph import Glue, Model, load_model
from ..runner import model_input
from . import checkpoint, onnx_out
from .glue import check_against_onnxruntime, convert
from .net import Network
from .twin import TwinLayer, load_twin

MODES = ("hil", "twin", "ideal")
_BEFORE, _AFTER = 1 << 40, 2 << 40         # key spaces of the evaluations (training steps count from 0)


@dataclass(frozen=True)
class FinetuneConfig:
    """What to train and how (everything that changes the numbers; a checkpoint is tied to it)."""

    mode: str = "hil"
    epochs: int = 5
    lr: float = 1e-3
    schedule: str = "cosine"                 # cosine (over all steps) | constant
    batch_size: int = 64
    layers: tuple[int, ...] | None = None    # analog layers to train (None: all)
    clamp: float | str | None = None         # None | "chip" (each device's ranges) | a number (|w| <= it)
    reg: float = 0.0                         # weight of sum (w - w_original)^2
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise HwloopError(f"mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.schedule not in ("cosine", "constant"):
            raise HwloopError(f"schedule {self.schedule!r}: one of cosine, constant")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.reg < 0:
            raise HwloopError("epochs >= 0, batch size >= 1, lr > 0 and reg >= 0 are required")


@dataclass
class FinetuneResult:
    report: dict
    out: Path | None = None
    weights: list[np.ndarray] = field(default_factory=list)
    biases: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class FinetuneOutput:
    """Where a fine-tuning writes and how it shows progress: the tuned ONNX model (``out``), the checkpoint
    after every step (``checkpoint_path``, default ``OUT.ckpt.npz``), whether to continue from it (``resume``),
    a progress bar and the JSON report (``report_path``)."""

    out: str | Path | None = None
    checkpoint_path: str | Path | None = None
    resume: bool = False
    progress: bool = False
    report_path: str | Path | None = None


def finetune(model: Model | str | Path, data: Dataset | str, *, val: Dataset | str | None = None,
             devices: Mapping[int, Device] | None = None, twin: str | Path | list[TwinLayer] | None = None,
             config: FinetuneConfig = FinetuneConfig(), output: FinetuneOutput | None = None,
             **outputs) -> FinetuneResult:
    """Fine-tune ``model``'s analog layers on ``data`` (see the module docstring); write ``out`` (ONNX),
    a checkpoint after every step (``checkpoint_path``, default ``OUT.ckpt.npz``) and ``report_path`` (JSON).

    ``outputs`` are ``FinetuneOutput``'s fields as keywords (``out=...``, ``resume=True``), on their own or
    replacing those of ``output``."""
    o = replace(output, **outputs) if output is not None else FinetuneOutput(**outputs)
    model = model if isinstance(model, Model) else load_model(model)
    train = data if isinstance(data, Dataset) else load_data(data)
    test = train if val is None else (val if isinstance(val, Dataset) else load_data(val))
    x, xv = model_input(model, train), model_input(model, test)
    devs = _devices(model, devices, config.mode)
    twins = twin if isinstance(twin, list) else load_twin(twin, model)
    if len(twins) != len(model.layers):
        raise HwloopError(f"twin has {len(twins)} layers, {model.path.name} has {len(model.layers)}")
    plans = onnx_out.plan(model)
    trainable = _trainable(model, config.layers)
    net = Network(model, twins, convert(model), trainable, seed=config.seed)
    for k in trainable:
        if plans[k].bias is None:
            net.biases[k].requires_grad_(False)          # nowhere in the graph to write a new bias
    _check_forward(model, net, x[:64])
    net.attach(devs)
    ckpt = Path(o.checkpoint_path) if o.checkpoint_path else (Path(f"{o.out}.ckpt.npz") if o.out else None)
    ident = {**asdict(config), "layers": trainable, "model_sha256": model.sha256, "data": train.name,
             "val": test.name, "n": len(train),
             "twin": str(twin) if isinstance(twin, (str, Path)) else (twin and "TwinLayer list")}
    loop = _Loop(net, config, len(train), _limits(net, devs, config.clamp), ckpt, ident)
    t_start = time.perf_counter()
    with _one_thread():
        loop.begin(o.resume, lambda: _accuracies(net, xv, test.y, devs, _BEFORE))
        loop.run(x, train.y, o.progress)
        weights = [w.detach().numpy().copy() for w in net.weights]
        biases = [b.detach().numpy().copy() for b in net.biases]
        if o.out is not None:
            onnx_out.write_model(model, plans, weights, biases, o.out)
        after = _accuracies(net, xv, test.y, devs, _AFTER)
    report = _report(model, (train, test), loop, after, time.perf_counter() - t_start, o.out)
    report["checkpoint_s_this_session"] = loop.checkpoint_s
    report["devices"] = [d.describe() for d in devs] if devs is not None else None
    if o.report_path is not None:
        with atomic_path(o.report_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return FinetuneResult(report, Path(o.out) if o.out else None, weights, biases)


class _Loop:
    """The optimizer, its schedule, the checkpoint after every step and the progress bar."""

    def __init__(self, net: Network, config: FinetuneConfig, n: int, limits, ckpt: Path | None, ident: dict):
        self.net, self.config, self.n, self.limits, self.ckpt, self.ident = net, config, n, limits, ckpt, ident
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=config.lr)
        self.per_epoch = -(-n // config.batch_size)
        self.total = config.epochs * self.per_epoch
        self.start, self.history, self.checkpoint_s = 0, {}, 0.0
        self.origin = ([w.detach().clone() for w in net.weights], [b.detach().clone() for b in net.biases])

    def begin(self, resume: bool, before) -> None:
        """Continue from the checkpoint (``resume``), or measure ``before()`` and write step 0."""
        if resume and self.ckpt is not None and self.ckpt.exists():
            self.start, self.history = checkpoint.load(self.ckpt, self.params, self.opt, self.ident)
            self.net.updated()
            return
        self.history = {"loss": [], "correct": [], "chip_s": []}
        self.history.update({f"before_{k}": [v] for k, v in before().items()})
        self._save(0)

    def _save(self, step: int) -> None:
        if self.ckpt is not None:
            t = time.perf_counter()
            checkpoint.save(self.ckpt, step, self.params, self.opt, self.history, self.ident)
            self.checkpoint_s += time.perf_counter() - t

    def run(self, x: np.ndarray, y: np.ndarray, progress: bool) -> None:
        """Steps ``start .. total``; a chip that fails for good stops it with the checkpoint to resume from."""
        from tqdm import tqdm

        h, net = self.history, self.net
        bar = tqdm(total=self.total, initial=self.start, disable=not progress, file=sys.stderr, unit="step",
                   desc=f"hwloop finetune ({self.config.mode})")
        try:
            for step in range(self.start, self.total):
                chip_s = net.chip_s
                loss, correct = self._step(x, y, step)
                h["loss"].append(loss)
                h["correct"].append(correct)
                h["chip_s"].append(net.chip_s - chip_s)
                self._save(step + 1)
                done = h["correct"][-min(len(h["correct"]), self.per_epoch):]   # the last epoch's batches
                acc = sum(done) / min(self.n, len(done) * self.config.batch_size)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", chip_s=f"{sum(h['chip_s']):.1f}", refresh=False)
                bar.update(1)
        except DeviceError as e:
            where = f"; checkpoint {self.ckpt}: continue with --resume" if self.ckpt is not None else ""
            raise HwloopError(f"{e}; training stopped after step {len(h['loss'])} of {self.total}{where}") from None
        finally:
            bar.close()


    def _step(self, x: np.ndarray, y: np.ndarray, step: int) -> tuple[float, int]:
        """One optimizer step on batch ``step``; returns (loss, correct predictions in the batch)."""
        net, config, opt = self.net, self.config, self.opt
        epoch, i = divmod(step, self.per_epoch)
        idx = _order(config, epoch, len(y))[i * config.batch_size:(i + 1) * config.batch_size].numpy()
        for g in opt.param_groups:
            g["lr"] = _lr(config, step, self.total)
        mode = "chip" if config.mode == "hil" else config.mode
        logits = net.forward(x[idx], mode, key=(step,))
        target = torch.from_numpy(y[idx])
        loss = loss_fn(net.model, logits, target)
        if config.reg:
            w0, b0 = self.origin
            loss = loss + config.reg * sum(((net.weights[k] - w0[k]) ** 2).sum() + ((net.biases[k] - b0[k]) ** 2).sum()
                                           for k in net.trainable)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k in net.trainable:
                wb, bb = self.limits[k]
                if wb is not None:
                    net.weights[k].clamp_(-wb, wb)
                if bb is not None:
                    net.biases[k].clamp_(-bb, bb)
        net.updated()
        return float(loss.detach()), int((logits.argmax(1) == target).sum())


def _devices(model: Model, devices: Mapping[int, Device] | None, mode: str) -> list[Device] | None:
    if devices is None:
        if mode == "hil":
            raise HwloopError("mode hil needs the devices (a bench file): the forward pass runs on them")
        return None
    from ..runner import resolve_devices

    return resolve_devices(model, devices)


def _trainable(model: Model, layers) -> list[int]:
    n = len(model.layers)
    chosen = list(range(n)) if layers is None else sorted(set(int(k) for k in layers))
    bad = [k for k in chosen if not 0 <= k < n]
    if bad or not chosen:
        raise HwloopError(f"layers to train {bad or 'none'}: {model.path.name} has analog layers 0..{n - 1}")
    return chosen


def _limits(net: Network, devs: list[Device] | None, clamp) -> list[tuple[float | None, float | None]]:
    """(weight bound, bias bound) per layer, from ``clamp``: a number, or "chip" (each device's ranges)."""
    n = len(net.model.layers)
    if clamp is None:
        return [(None, None)] * n
    if clamp != "chip":
        return [(float(clamp), None)] * n
    if devs is None:
        raise HwloopError("clamp 'chip' needs the devices (a bench file) to read their ranges from")
    out = []
    for k, d in enumerate(devs):
        lim = getattr(d, "limits", None)
        if isinstance(lim, dict):
            out.append((lim.get("weight_range"), lim.get("bias_range")))
            continue
        prof = getattr(d, "profile", None)
        rng = prof.for_layer(k, net.model.layers[k].name).weights.range if prof is not None else None
        out.append((rng, None))
    return out


def _lr(config: FinetuneConfig, step: int, total: int) -> float:
    if config.schedule == "constant" or total == 0:
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * step / total))


def _order(config: FinetuneConfig, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence((config.seed, 0x5E1, epoch)).generate_state(1)[0]))
    return torch.randperm(n, generator=gen)


def loss_fn(model: Model, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the model's class scores (log of probabilities when the graph ends in a Softmax)."""
    last = next((n.op_type for n in model.proto.graph.node if model.output_name in n.output), "")
    if last == "Softmax":
        return F.nll_loss(torch.log(out.clamp_min(1e-12)), target)
    if last == "LogSoftmax":
        return F.nll_loss(out, target)
    return F.cross_entropy(out, target)


def accuracy(net: Network, x: np.ndarray, y: np.ndarray, mode: str, tag: int, batch: int = 512) -> float:
    """Accuracy of ``net`` in ``mode`` (chip, twin, ideal) on ``x``; draws keyed by ``tag`` and batch."""
    correct = 0
    with torch.no_grad():
        for b in range(0, len(x), batch):
            out = net.forward(x[b:b + batch], mode, key=(tag + b // batch,))
            correct += int((out.argmax(1).numpy() == y[b:b + batch]).sum())
    return correct / max(len(x), 1)


def _accuracies(net: Network, x, y, devs, tag: int) -> dict[str, float]:
    acc = {"ideal": accuracy(net, x, y, "ideal", tag), "twin": accuracy(net, x, y, "twin", tag)}
    if devs is not None:
        acc["chip"] = accuracy(net, x, y, "chip", tag)
    return acc


def _check_forward(model: Model, net: Network, xb: np.ndarray) -> None:
    """Each glue segment's torch form against onnxruntime, and the ideal forward against the whole model."""
    import onnxruntime as ort

    env: dict[str, np.ndarray] = {model.input_name: xb}
    with torch.no_grad():
        for i, step in enumerate(model.steps):
            if i in net.glue:
                g = net.glue[i]
                feeds = {t: env[t] for t in g.glue.inputs if t in env}
                check_against_onnxruntime(model, g, feeds)
                env.update({k: v.numpy() for k, v in g({k: torch.from_numpy(v) for k, v in feeds.items()}).items()})
            elif not isinstance(step, Glue) and step.output in net.need:
                env[step.output] = net.run_layer(step, torch.from_numpy(env[step.input]), "ideal", (0,), None).numpy()
    if model.output_name in {o.name for o in model.proto.graph.output}:
        sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = sess.run([model.output_name], {model.input_name: xb})[0]
        got = env[model.output_name].reshape(ref.shape)
        if not np.allclose(got, ref, rtol=1e-3, atol=1e-4 * (1 + np.abs(ref).max())):
            raise HwloopError(f"{model.path}: the model rebuilt in torch differs from onnxruntime "
                              f"(max difference {np.abs(got - ref).max():.3g}; please report this model)")


class _one_thread:
    """One torch thread: the same numbers on any machine, and no fight over the cores with the chips."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _report(model: Model, data: tuple[Dataset, Dataset], loop: _Loop, after: dict, wall_s: float, out) -> dict:
    """What the fine-tuning did: accuracies before and after (with their errors), per-epoch loss, costs."""
    (train, test), config, history, per_epoch, net = data, loop.config, loop.history, loop.per_epoch, loop.net
    before = {k[len("before_"):]: v[0] for k, v in history.items() if k.startswith("before_")}
    n_epochs = -(-len(history["loss"]) // per_epoch) if per_epoch else 0
    epochs = []
    for e in range(n_epochs):
        sl = slice(e * per_epoch, (e + 1) * per_epoch)
        n_seen = min(len(train), len(history["loss"][sl]) * config.batch_size)
        epochs.append({"epoch": e + 1, "loss": float(np.mean(history["loss"][sl])),
                       "train_accuracy": float(np.sum(history["correct"][sl]) / n_seen)})
    return {
        "model": str(model.path), "out": str(out) if out else None, "data": train.name, "val": test.name,
        "n_val": len(test), "config": {**asdict(config), "layers": net.trainable}, "steps": len(history["loss"]),
        "accuracy_before": before, "accuracy_after": after,
        "accuracy_stderr": {k: math.sqrt(max(v * (1 - v), 1e-12) / max(len(test), 1)) for k, v in after.items()},
        "epochs": epochs, "chip_s_this_session": net.chip_s, "wall_s_this_session": wall_s,
        "programmings_this_session": net.programmings,
    }


def format_report(report: dict) -> str:
    """The report as a few lines of text."""
    lines = [f"finetune ({report['config']['mode']}) of {report['model']}: {report['steps']} steps on "
             f"{report['data']}, accuracy on {report['val']} ({report['n_val']} samples):",
             f"  {'':6} {'before':>8} {'after':>8}"]
    for k in ("chip", "twin", "ideal"):
        if k in report["accuracy_after"]:
            lines.append(f"  {k:6} {report['accuracy_before'].get(k, float('nan')):8.4f} "
                         f"{report['accuracy_after'][k]:8.4f}  (± {report['accuracy_stderr'][k]:.4f})")
    for e in report["epochs"]:
        lines.append(f"  epoch {e['epoch']}: loss {e['loss']:.4f}, train accuracy {e['train_accuracy']:.4f}")
    lines.append(f"this session: {report['programmings_this_session']} programmings, "
                 f"{report['chip_s_this_session']:.1f} s in the devices, {report['wall_s_this_session']:.1f} s in all")
    if report["out"]:
        lines.append(f"tuned model: {report['out']}")
    return "\n".join(lines)
