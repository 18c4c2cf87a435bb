"""Image sources and segmentation sources: every image collection the pipeline reads, by spec.

Split by job: :mod:`.base` (the source interface, subsets, in-memory lists, concatenation),
:mod:`.files` (image folders, Hugging Face datasets), :mod:`.builtin` (offline sets),
:mod:`.spec` (:func:`open_source`), :mod:`.segmentation` (images with per-pixel labels).
"""

from saescope.core.sources.base import ConcatSource, ImageSource, ListSource, Loaded, SubsetSource
from saescope.core.sources.builtin import (
    BUILTINS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    PHOTOS,
    ArraySource,
    PhotosSource,
    digits_source,
    fashion_mnist_source,
    lfw_source,
    random_resized_crop,
)
from saescope.core.sources.files import IMAGE_EXTENSIONS, FolderSource, HFSource
from saescope.core.sources.segmentation import (
    IGNORE,
    SEG_BUILTINS,
    HFSegmentationSource,
    MaskFolderSource,
    SceneSource,
    SegmentationSource,
    open_segmentation_source,
)
from saescope.core.sources.spec import open_source, parse_params

__all__ = [
    "ImageSource",
    "SubsetSource",
    "ListSource",
    "FolderSource",
    "HFSource",
    "ConcatSource",
    "PhotosSource",
    "ArraySource",
    "digits_source",
    "fashion_mnist_source",
    "lfw_source",
    "open_source",
    "parse_params",
    "random_resized_crop",
    "Loaded",
    "IMAGE_EXTENSIONS",
    "BUILTINS",
    "PHOTOS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IGNORE",
    "SEG_BUILTINS",
    "HFSegmentationSource",
    "MaskFolderSource",
    "SceneSource",
    "SegmentationSource",
    "open_segmentation_source",
]
