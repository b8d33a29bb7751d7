"""``hwloop run --dry-run`` with a bench file: what a run would do on each layer's device, touching no hardware.

Tiles, measurements and round trips per batch come from the same plan as the
driver (``hwloop.bench.plan``) and the driver's round-trip counts.
"""

from __future__ import annotations

import math

from .chipspec import ChipSpec
from .driver import ROUND_TRIPS_PER_MEASUREMENT, ROUND_TRIPS_PER_PROGRAMMING
from .plan import chunks_for, tiles_for
from .settings import DEFAULTS

_CAPACITY = ("max_inputs", "max_outputs", "max_batch", "max_repeats")


def plan_text(bench, model, n_samples: int, batch_size: int, repeats: int) -> str:
    """The dry-run plan of ``model`` on ``bench`` (a ``hwloop.bench.benchfile.Bench``), one line per layer."""
    n_batches = -(-n_samples // batch_size)
    assigned = bench.assignment(model)
    shared = bench.shared_chips(model)
    lines = [f"bench {bench.path}: {len(model.layers)} analog layers, {n_samples} samples in {n_batches} "
             f"batches of {batch_size}, {repeats} repeats"]
    total = 0
    for L in model.layers:
        name = assigned[L.index]
        spec = bench.devices_spec.get(name) if name else None
        head = f"  layer {L.index} {L.name!r} ({L.n_out}x{L.n_in}, {L.activation}) -> "
        if spec is None or spec.kind == "emulator":
            lines.append(head + f"emulator {name or '(default)'} profile {spec.profile if spec and spec.profile else 'ideal'}")
            continue
        if spec.kind == "plugin":
            lines.append(head + f"plug-in {name} ({spec.type_name})")
            continue
        cap = spec.capacity or tuple(getattr(ChipSpec(), k) for k in _CAPACITY)
        tiles = tiles_for(L.n_out, L.n_in, cap[1], cap[0])
        rows, k = (batch_size, repeats) if L.index == 0 else (batch_size * repeats, 1)
        meas = sum(len(chunks_for(rows, k, t.rows.stop - t.rows.start, cap[2], cap[3],
                                  spec.options.get("max_block_bytes", DEFAULTS["max_block_bytes"])))
                   for t in tiles)
        reprogram = len(tiles) > 1 or name in shared
        per_batch = meas * ROUND_TRIPS_PER_MEASUREMENT + (len(tiles) * ROUND_TRIPS_PER_PROGRAMMING if reprogram else 0)
        layer_total = per_batch * n_batches + (0 if reprogram else ROUND_TRIPS_PER_PROGRAMMING)
        total += layer_total
        lines.append(
            head + f"chip {name} at {spec.resource}: array {cap[0]}x{cap[1]}"
            + ("" if spec.capacity else " (assumed; declare capacity: to be sure)")
            + f", {len(tiles)} tile(s) ({math.ceil(L.n_out / cap[1])}x{math.ceil(L.n_in / cap[0])})"
            + (", bias+activation on the host" if len(tiles) > 1 else "")
            + f", {meas} measurement(s) per batch, {per_batch} round trips per batch, {layer_total} in all")
    lines.append(f"  round trips to chips: {total}")
    if bench.pipelined(model):
        lines.append("  schedule: pipelined (each layer's device works on the next batch while the "
                     "following layer's takes this one)")
    else:
        lines.append("  schedule: one batch at a time through every layer"
                     + (f" (chip {', '.join(shared)} serves several layers)" if shared else ""))
    return "\n".join(lines)

