"""The worker side of :func:`flowseg.batch.segment_files` on Dask (imports ``distributed``).

Kept apart from :mod:`flowseg.batch` so that in-process runs never import Dask; the chunk code
both run lives below them, in :mod:`flowseg._batch_chunk`.
"""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin, get_worker

from flowseg._batch_chunk import BatchConfig, ImageOutcome, segment_chunk

__all__ = ["ModelPlugin", "worker_chunk"]


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker (``setup``, also on workers that join later).

    Registered under :attr:`name`, unique per model path and device, so tasks of different
    models find their own.

    Parameters
    ----------
    model_path : str, list of str, or None
        Checkpoint path as the workers see it (None: the model shipped with flowseg; a list:
        the ensemble of those files).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda:N"`` on the worker.
    torch_threads : int, optional
        ``torch.set_num_threads`` on the worker (avoids oversubscribing a shared machine).
    """

    def __init__(self, model_path: str | list[str] | None, device: str,
                 torch_threads: int | None = None):
        self.model_path = model_path
        self.device = device
        self.torch_threads = torch_threads
        self.name = f"flowseg-model:{model_path}:{device}"
        self.model = None

    def setup(self, worker=None) -> None:
        import torch

        from flowseg.api import load_model

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self.model = load_model(self.model_path, device=self.device)

    def teardown(self, worker=None) -> None:
        self.model = None


def worker_chunk(paths: list[str], out_dir: str, config: BatchConfig, settings: dict[str, Any],
                 overwrite: bool, plugin_name: str) -> list[ImageOutcome]:
    """A Dask task: :func:`flowseg._batch_chunk.segment_chunk` with this worker's cached model."""
    model = get_worker().plugins[plugin_name].model
    return segment_chunk(paths, out_dir, model=model, config=config, settings=settings,
                         overwrite=overwrite)
