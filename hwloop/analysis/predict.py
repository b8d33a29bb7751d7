"""First-order prediction of the noise covariance of every analog layer, without sampling.

Linearised at the noise-free operating point of each sample (x: clean layer
output, a: its pre-activation, J_n = diag(f'(a_n)) W_n), the covariance of a
layer's output obeys

    C_n = J_n C_{n-1} J_n^T + diag(D_A + D_M E[x^2]) + D_AC 1 1^T + D_MC E[x x^T]

with E[x x^T] = x x^T + P (P: the covariance arriving at the noise stage), which
makes the multiplicative terms exact for a noisy input (the plain first-order
form uses x x^T alone).  The full N x N covariance is carried for every
sample (batched float64 matmuls), because W mixes independent noise into
common-mode noise.  Conventions and limits: docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from ..errors import HwloopError
from ..layer import AnalogLayer, activate, activation_slope
from .measured import build_dataset, layer_summary, snr_db

#: glue ops that leave the values of a (sample, features) tensor unchanged
IDENTITY_GLUE = ("Flatten", "Reshape", "Identity", "Cast", "Dropout", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class LayerNoise:
    """The noise a device adds to one layer, as variances (see ``hwloop.profiles.NoiseSettings``).

    ``extra`` is an additional uncorrelated variance on the output (ADC
    quantisation step^2/12, uniform dither w^2/12); ``shot`` a variance
    shot * |x|.  ``placement``: post (after the activation), pre (on the
    pre-activation) or both (the same intensities at both places).
    """

    D_A: float = 0.0
    D_M: float = 0.0
    D_AC: float = 0.0
    D_MC: float = 0.0
    placement: str = "post"
    extra: float = 0.0
    shot: float = 0.0
    read: float = 0.0                  # weight read noise: variance read * ||x||^2 on each product
    cols: int | None = None            # column tile size: correlated terms are shared within a tile only

    @classmethod
    def from_settings(cls, settings: Any, layer: AnalogLayer | None = None,
                      quantisation: bool = True) -> "LayerNoise":
        """From ``Profile.for_layer(...)``; the ADC step enters as step^2/12 when ``quantisation``."""
        from ..physics import quantization_variance, weight_full_scale

        nz = settings.noise
        extra = nz.dither ** 2 / 12.0
        if quantisation:
            extra += quantization_variance(settings.adc)
        read = 0.0
        if layer is not None and settings.weights.read_noise:
            read = (settings.weights.read_noise * weight_full_scale(layer.weight, settings.weights)) ** 2
        return cls(nz.D_A, nz.D_M, nz.D_AC, nz.D_MC, nz.placement, extra, nz.shot, read, settings.array.cols)

    def scaled(self, factor: float) -> "LayerNoise":
        """The same noise with every fresh variance multiplied by ``factor`` (1/k for k averaged executions)."""
        f = factor
        return LayerNoise(self.D_A * f, self.D_M * f, self.D_AC * f, self.D_MC * f, self.placement,
                          self.extra * f, self.shot * f, self.read * f, self.cols)


def not_modelled(settings: Any) -> list[str]:
    """Profile effects the prediction leaves out (static or operating-point changes, see docs/analysis.md)."""
    names = [n for n in ("dac", "gain_offset", "transfer", "drift") if getattr(settings, n).active]
    w = settings.weights
    if w.bits is not None or w.range is not None or w.program_noise:
        names.append("weights (programming)")
    return names


def _sandwich(w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """W C W^T for every sample: w (n_out, n_in), c (B, n_in, n_in) symmetric -> (B, n_out, n_out).

    Two large 2-D matrix products instead of B small ones.
    """
    b, n_in, _ = c.shape
    y = (c.reshape(b * n_in, n_in) @ w.T).reshape(b, n_in, -1)          # C W^T
    yt = np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(-1, n_in)   # W C, rows
    return (yt @ w.T).reshape(b, w.shape[0], w.shape[0])


def _tile_mask(n: int, cols: int | None) -> np.ndarray | float:
    """1 where two neurons share a column tile (and so its correlated draws), else 0."""
    if cols is None or cols >= n:
        return 1.0
    t = np.arange(n) // cols
    return (t[:, None] == t[None, :]).astype(np.float64)


def _add_noise(p: np.ndarray | None, z: np.ndarray, nz: LayerNoise) -> np.ndarray:
    """P + Q: the covariance after the noise stage, given signal z (B, N) and incoming covariance P."""
    b, n = z.shape
    mask = _tile_mask(n, nz.cols)
    c = np.zeros((b, n, n)) if p is None else p * (1.0 + nz.D_MC * mask)   # D_MC * P  (from E[x x^T])
    if nz.D_MC:
        c += nz.D_MC * mask * (z[:, :, None] * z[:, None, :])
    if nz.D_AC:
        c += nz.D_AC * mask
    ex2 = z ** 2 if p is None else z ** 2 + np.diagonal(p, axis1=1, axis2=2)
    diag = nz.D_A + nz.D_M * ex2 + nz.shot * np.abs(z)
    idx = np.arange(n)
    c[:, idx, idx] += diag
    return c


def propagate(layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x: np.ndarray,
              average: Mapping[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Clean forward pass and covariance propagation for inputs x (B, n_in) through dense layers.

    ``average`` maps a layer index to k: that layer is executed k times on the
    same input and averaged, dividing its own fresh noise variances by k.
    Returns, per layer, ``mean`` (B, N) (the clean output), ``var`` (B, N) and
    ``cm`` (B,) (the mean off-diagonal covariance), and ``cov`` (B, N, N) of the last layer.
    """
    if len(layers) != len(noises):
        raise ValueError("one LayerNoise per layer")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    c: np.ndarray | None = None
    out = []
    for n, (layer, nz) in enumerate(zip(layers, noises)):
        if layer.conv is not None:
            raise HwloopError(f"layer {layer.name!r}: the prediction supports dense layers only, not Conv")
        if x.shape[1] != layer.n_in:
            raise HwloopError(f"layer {layer.name!r}: takes {layer.n_in} inputs, gets {x.shape[1]}")
        k = (average or {}).get(n, 1)
        if k != 1:
            nz = nz.scaled(1.0 / k)
        w = np.asarray(layer.weight, dtype=np.float64)
        a = x @ w.T + np.asarray(layer.bias, dtype=np.float64)
        y = activate(layer.activation, a.copy())
        s = activation_slope(layer.activation, a)
        p = None if c is None else _sandwich(w, c)                      # covariance of a
        if nz.read:
            ex2 = (x ** 2).sum(axis=1) + (0.0 if c is None else np.trace(c, axis1=1, axis2=2))
            p = np.zeros((len(x), layer.n_out, layer.n_out)) if p is None else p
            idx = np.arange(layer.n_out)
            p[:, idx, idx] += nz.read * ex2[:, None]
        if nz.placement in ("pre", "both"):
            p = _add_noise(p, a, LayerNoise(nz.D_A, nz.D_M, nz.D_AC, nz.D_MC, cols=nz.cols))
        if p is not None:
            p *= s[:, :, None]
            p *= s[:, None, :]                                        # J C J^T
        post = nz if nz.placement in ("post", "both") else LayerNoise(extra=nz.extra, shot=nz.shot, cols=nz.cols)
        c = _add_noise(p, y, post)
        idx = np.arange(y.shape[1])
        c[:, idx, idx] += post.extra
        var = np.diagonal(c, axis1=1, axis2=2).copy()
        m = y.shape[1]
        cm = (c.sum(axis=(1, 2)) - var.sum(axis=1)) / (m * (m - 1)) if m > 1 else np.full(len(y), np.nan)
        out.append({"mean": y, "var": var, "cm": cm, "pre": a})
        x = y
    out[-1]["cov"] = c
    return out


def _first_input(model, x: np.ndarray) -> np.ndarray:
    """The first analog layer's noise-free input: the data through the glue before it (run exactly)."""
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if shape and all(isinstance(d, int) for d in shape) and int(np.prod(shape)) == x[0].size:
        x = x.reshape(len(x), *shape)
    feeds = {getattr(model, "input_name", "input"): x}
    for step in getattr(model, "steps", []):
        if isinstance(step, AnalogLayer):
            return np.asarray(feeds[step.input]).reshape(len(x), -1)
        feeds.update(step.run(feeds))
    return x.reshape(len(x), -1)


def _check_glue(model, clean: Sequence[np.ndarray]) -> None:
    """Raise unless every glue segment between two analog layers passes the earlier layer's output unchanged.

    Checked on the op types (``IDENTITY_GLUE``) and on the values: the glue is
    run on the clean output and must return exactly the same numbers.
    """
    steps = list(getattr(model, "steps", []))
    pos = [i for i, s in enumerate(steps) if isinstance(s, AnalogLayer)]
    for k in range(1, len(pos)):
        prev, layer = steps[pos[k - 1]], steps[pos[k]]
        feeds = {prev.output: clean[k - 1]}
        for step in steps[pos[k - 1] + 1: pos[k]]:
            for node in step.nodes:
                if node.op_type not in IDENTITY_GLUE:
                    raise HwloopError(f"node {node.name or node.op_type!r} ({node.op_type}) between analog layers "
                                      f"{prev.name!r} and {layer.name!r}: the prediction supports only "
                                      f"identity-like glue ({', '.join(IDENTITY_GLUE)})")
            if any(t not in feeds for t in step.inputs):
                raise HwloopError(f"glue before layer {layer.name!r} reads {', '.join(step.inputs)}, not only the "
                                  f"output of layer {prev.name!r}: the prediction supports chains only")
            feeds.update(step.run(feeds))
        got = feeds.get(layer.input)
        if got is None or got.size != clean[k - 1].size or not np.array_equal(
                np.asarray(got, np.float32).reshape(clean[k - 1].shape), np.asarray(clean[k - 1], np.float32)):
            raise HwloopError(f"layer {layer.name!r} does not receive the output of layer {prev.name!r} unchanged: "
                              "the prediction supports chains with identity-like glue only")


def predict(model, profile, data, *, average: Mapping[int, int] | None = None,
            quantisation: bool = True) -> xr.Dataset:
    """Predicted per-layer noise statistics of ``model`` under ``profile`` on ``data``.

    ``model``: a ``hwloop.graph.Model`` (or anything with ``.layers``);
    ``profile``: a ``hwloop.profiles.Profile``, a path or a name, or a list
    of them (one per analog layer, as in a mixed bench run); ``data``: a
    ``hwloop.data.Dataset``, a spec string, or an input array (samples first).
    The Dataset has the variable names of ``analyze_run`` (``var_mean``,
    ``cm_var``, ``snr_db_median``, ``mean_k``, ``var_k``, ...).
    """
    from ..data import load_data
    from ..profiles import load_profile

    if isinstance(data, str):
        data = load_data(data)
    x = np.asarray(getattr(data, "x", data))
    layers = list(model.layers)
    if not layers:
        raise HwloopError("the model has no analog layers")
    per_layer = list(profile) if isinstance(profile, (list, tuple)) else [profile] * len(layers)
    if len(per_layer) != len(layers):
        raise HwloopError(f"{len(per_layer)} profiles given for {len(layers)} analog layers")
    per_layer = [load_profile(p) if isinstance(p, str) or hasattr(p, "__fspath__") else p for p in per_layer]
    profile = per_layer[0]
    settings = [p.for_layer(l.index, l.name) for p, l in zip(per_layer, layers)]
    for l, st in zip(layers, settings):
        if st.array.rows is not None and l.n_in > st.array.rows:
            raise HwloopError(f"layer {l.name!r}: split into row tiles of {st.array.rows} inputs by the profile; "
                              "the prediction does not model row tiling")
    noises = [LayerNoise.from_settings(st, l, quantisation) for l, st in zip(layers, settings)]
    skipped = sorted({n for st in settings for n in not_modelled(st)})
    res = propagate(layers, noises, _first_input(model, x), average)
    _check_glue(model, [r["mean"].astype(np.float32) for r in res])
    stats = []
    for r in res:
        st = {"mean": r["mean"], "var": r["var"], "cm_sample": r["cm"]}
        st.update(layer_summary(r["mean"], r["var"], r["cm"]))
        st["snr_db"] = snr_db(r["mean"], r["var"])
        stats.append(st)
    attrs = {"profile": getattr(profile, "name", str(profile)), "profile_sha256": getattr(profile, "sha256", ""),
             "samples": int(len(x)), "quantisation": int(bool(quantisation)),
             "not_modelled": ", ".join(skipped) or "none"}
    return build_dataset([l.name for l in layers], stats, "predicted", attrs)


def predict_for_run(run, model=None, profile=None, data=None, quantisation: bool = True) -> xr.Dataset:
    """The prediction for a recorded run: model, per-layer profiles and data from its provenance unless given.

    Checks that the data reproduce the run's noise-free first layer, so a
    prediction is never silently compared with a different set of samples.
    """
    from ..data import load_data
    from ..graph import load_model
    from ..profiles import ideal_profile, load_profile, parse_profile

    attrs = run.attrs
    model = load_model(model or attrs.get("model_path") or _missing("model_path", "--model"))
    if profile is not None:
        profiles = load_profile(profile)
    else:
        profiles = []
        for k, dev in enumerate(attrs.get("devices") or _missing("devices", "--profile")):
            prof = dev.get("profile")
            if prof == "ideal":
                profiles.append(ideal_profile())
            elif isinstance(prof, dict) and "text" in prof:
                profiles.append(parse_profile(prof["text"], prof.get("path") or f"<profile of layer {k}>"))
            else:
                raise HwloopError(f"layer {k} ran on {dev.get('type', 'a device')} without a profile in the run's "
                                  "provenance: give --profile")
    if data is None:
        name = attrs.get("data") or _missing("data", "--data")
        data = f"{name}@{int(attrs['n_samples'])}" if "n_samples" in attrs else name
    ds = load_data(data) if isinstance(data, str) else data
    clean0 = np.asarray(run.clean(0), dtype=np.float64)
    sample = getattr(run.clean(0), "sample", None)
    x = np.asarray(getattr(ds, "x", ds))
    if len(x) != len(clean0):
        if sample is None or len(sample) != len(clean0):
            raise HwloopError(f"data {data!r} has {len(x)} samples, the run {len(clean0)}")
        x = x[np.asarray(sample.values, dtype=np.int64)]
    pred = predict(model, profiles, x, quantisation=quantisation)
    err = np.max(np.abs(pred["mean_0"].values - clean0)) if clean0.size else 0.0
    if err > 1e-3 * max(1.0, float(np.max(np.abs(clean0)))):
        raise HwloopError(f"data {data!r} does not reproduce the run's noise-free outputs of layer 0 "
                          f"(max difference {err:.3g}): give the run's --data and --model")
    return pred


def _missing(key: str, option: str):
    raise HwloopError(f"the run's provenance has no {key!r}: give {option}")
