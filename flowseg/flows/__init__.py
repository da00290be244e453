"""Flow fields: labels -> flow targets, and flows + cell probability -> labels.

Public API
----------
labels_to_flows(labels, *, device=None)
    Unit (dy, dx) flows descending the in-cell geodesic distance to each cell's centre
    (tilted inwards near borders); numpy in -> numpy out, torch in -> torch out.
flows_to_labels(flows, cellprob, *, config=None, device=None)
    Batched discrete flow following with pointer jumping, seed clustering, size filter,
    flow-error QC, hole filling; int32 labels (numpy), per-image configs.
flow_error(flows, labels)
    Per-instance mean squared difference between flows and flows recomputed from labels.
euler_steps(positions, flows, *, niter, step=1.0)
    Continuous bilinear flow following (``grid_sample``, ``align_corners=True``).
fill_holes(labels)
    Fill background regions enclosed by one instance, for a batch at once.
kernels_ready(*, wait=0.0), compile_kernels()
    Whether the numba kernels of the CPU route are compiled (they compile in a background
    process on a new machine; the CPU takes the torch route meanwhile), and compiling them now.
"""

from flowseg.flows._warmup import compile_kernels, kernels_ready
from flowseg.flows.follow import euler_steps
from flowseg.flows.masks import fill_holes, flow_error, flows_to_labels
from flowseg.flows.targets import labels_to_flows

__all__ = ["compile_kernels", "euler_steps", "fill_holes", "flow_error", "flows_to_labels",
           "kernels_ready", "labels_to_flows"]
