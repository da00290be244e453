"""The model and sample images shipped inside the package (no download, works offline)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "default_model_path", "sample_paths"]

#: File name of the default checkpoint inside ``flowseg/model/weights/``.
DEFAULT_MODEL = "default.pt"


def default_model_path() -> Path:
    """Path of the shipped default checkpoint (its model card: ``MODEL_CARD.md`` beside it).

    Raises
    ------
    FileNotFoundError
        The package was installed without its weights.
    """
    path = Path(str(resources.files("flowseg.model") / "weights" / DEFAULT_MODEL))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the default model is missing from this flowseg install; "
                                "pass a checkpoint path (--model PATH) or reinstall flowseg")
    return path


def sample_paths() -> list[Path]:
    """The real sample images shipped in ``flowseg/samples/`` (attribution in its README), sorted."""
    from flowseg.io.images import IMAGE_SUFFIXES

    folder = Path(str(resources.files("flowseg") / "samples"))
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
