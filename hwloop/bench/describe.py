"""A bench device's provenance: what ``describe()`` records in a run (which chip, how it was driven, what
was scaled and where the activation ran, the faults survived)."""

from __future__ import annotations

import math


def describe_device(dev) -> dict:
    """The provenance of ``dev`` (a ``hwloop.bench.driver.DescribedDevice``)."""
    lim, link = dev.limits, dev.link
    idn = "; ".join(lk.idn for lk in dev.links.values())
    if dev._temperature is None and dev.desc.data.get("temperature"):     # not programmed yet: read it now
        try:
            dev._temperature = dev._ask_temperature()
        except Exception:
            pass
    reconnects = dev.reconnects
    d = {"type": type(dev).__name__, "dialect": dev.desc.name, "description": str(dev.desc.path),
         "resource": dev.resource, "idn": idn, "serial": (link.idn.split(",") + ["", "", ""])[2],
         "temperature_c": dev._temperature,
         "capacity": {k: lim[k] for k in ("max_inputs", "max_outputs", "max_batch", "max_repeats")},
         "ranges": {"weights": lim["weight_range"], "bias": lim["bias_range"], "inputs": list(lim["input_range"]),
                    "outputs": list(lim["output_range"]), "output_bits": lim["output_bits"],
                    "activations": list(lim["activations"])},
         "byte_order": link.order if dev.desc.block else "ascii", "options": dev.settings.options(),
         "stats": dict(dev.stats, reconnects=reconnects), "reconnects": reconnects, "retries": dev.stats["retries"]}
    if dev.layer is not None:
        d["tiling"] = {"tiles": len(dev.plan.tiles),
                       "grid": [math.ceil(dev.layer.n_out / lim["max_outputs"]),
                                math.ceil(dev.layer.n_in / lim["max_inputs"])],
                       "host_bias_and_activation": dev.plan.host,
                       "chip_activation": dev.desc.data["activations"][dev.plan.tiles[0].activation]}
        d["scaling"] = {"weights": dev.plan.weight_scale,
                        "inputs": "per measurement, power of two" if dev.settings.scale_inputs else "off",
                        "input_scales": {f"{k:g}": v for k, v in sorted(dev.input_scales.items())}}
        d["placement"] = dict(dev.plan.placement, notes=dev.plan.notes)
    if dev._faults:
        d["faults_survived"] = dev._faults[-20:]
    return d
