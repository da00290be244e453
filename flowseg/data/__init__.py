"""Training data: normalisation, paired augmentation, in-memory samples and crop datasets."""

from flowseg.data.augment import augment_pair
from flowseg.data.dataset import CropDataset, Sample, class_names_of, load_folder, make_sample
from flowseg.data.normalize import normalize_image

__all__ = ["CropDataset", "Sample", "augment_pair", "class_names_of", "load_folder",
           "make_sample", "normalize_image"]
