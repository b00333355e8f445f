"""The dataset registry: every dataset `prepare` can read, and each one's facts, in one place.

`data.dataset` in params.yaml names one of `DATASETS` (`cifar10`, the default). A dataset
declares where it comes from (an official archive with its md5 and size, or a folder of the
user's images), how it is read (`data/archive.py` for the CIFAR pickles, `data/folder.py` for
images), its number of classes and its native image size. Everything downstream of `prepare`
reads the classes and the image size from the prepared data's `meta.json`, and everything that
loads a model file from the file's record: no other module keeps a copy. The only CIFAR-10 facts
used elsewhere are `CIFAR10_CLASSES` and `LEGACY_IMAGE_SIZE`, the defaults for model files written
before their records named classes and image size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CHANNELS = 3  # every dataset is stored as RGB, one uint8 per channel (NHWC)
# The largest image side a prepared folder, a model file or a logged model may declare: far
# beyond data.image_size's bound, well short of an overflow when it is multiplied out.
MAX_IMAGE_SIDE = 4096


def is_image_side(value: object) -> bool:
    """Whether `value` can be an image's side in pixels: an int (not a bool) in
    1..MAX_IMAGE_SIDE."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_IMAGE_SIDE


@dataclass(frozen=True)
class PickleArchive:
    """A dataset shipped as one gzipped tar of python-pickled batches (the CIFAR format): each
    batch a dict of `data` (N x 3*S*S uint8 rows of R, G, B planes) and a list of labels; a meta
    pickle lists the class names."""

    key: str  # for params.yaml, files and records (the MLflow dataset name)
    name: str  # for people
    num_classes: int
    image_size: int  # pixels, square
    train_size: int  # images in the official training batches
    test_size: int
    url: str  # the official archive
    md5: str
    size: int  # bytes
    archive_name: str  # the file `download` writes
    member_dir: str  # the folder inside the tar
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    names_field: str  # the meta pickle's list of class names
    labels_field: str  # each batch's list of labels

    @property
    def source(self) -> str:
        return "archive"


@dataclass(frozen=True)
class ImageFolder:
    """The user's own images: one sub-folder per class (optionally under `train/`, `val/` and
    `test/`), any size and format Pillow decodes, resized at `prepare` to `data.image_size`
    (`data/folder.py`). Its classes are the sub-folders' names, so it declares none here."""

    key: str = "folder"
    name: str = "image folder"

    @property
    def source(self) -> str:
        return "folder"


Dataset = PickleArchive | ImageFolder

CIFAR10 = PickleArchive(
    key="cifar10",
    name="CIFAR-10",
    num_classes=10,
    image_size=32,
    train_size=50_000,
    test_size=10_000,
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    size=170_498_071,
    archive_name="cifar-10-python.tar.gz",
    member_dir="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_member="test_batch",
    meta_member="batches.meta",
    names_field="label_names",
    labels_field="labels",
)
# CIFAR-100's 100 fine classes; the same archive also labels each image with one of 20
# superclasses ("coarse"), a dataset of its own here.
CIFAR100 = PickleArchive(
    key="cifar100",
    name="CIFAR-100",
    num_classes=100,
    image_size=32,
    train_size=50_000,
    test_size=10_000,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    size=169_001_437,
    archive_name="cifar-100-python.tar.gz",
    member_dir="cifar-100-python",
    train_members=("train",),
    test_member="test",
    meta_member="meta",
    names_field="fine_label_names",
    labels_field="fine_labels",
)
CIFAR100_COARSE = dataclasses.replace(
    CIFAR100,
    key="cifar100_coarse",
    name="CIFAR-100 (20 superclasses)",
    num_classes=20,
    names_field="coarse_label_names",
    labels_field="coarse_labels",
)
FOLDER = ImageFolder()

DATASETS: dict[str, Dataset] = {d.key: d for d in (CIFAR10, CIFAR100, CIFAR100_COARSE, FOLDER)}
DEFAULT = CIFAR10.key

# Model files and logged models written before their records named the classes and the input
# size were all CIFAR-10 models: these are what loading one of them assumes.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
LEGACY_IMAGE_SIZE = CIFAR10.image_size
