"""CIFAR-10's facts, in one place: its classes, image size, split sizes and the official archive.

Every other module reads these names; none restates them. What a prepared folder holds is
recorded in its `meta.json` too (the class names), so code that loads a model or prepared data
takes the classes from there and falls back to `CLASSES` only for files that predate it.
"""

from __future__ import annotations

NAME = "CIFAR-10"  # for people
KEY = "cifar10"  # for files and records (the MLflow dataset name)
CLASSES = (
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
NUM_CLASSES = len(CLASSES)
IMAGE_SIZE = 32  # pixels, square
CHANNELS = 3
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)  # stored NHWC: one uint8 per channel
TRAIN_SIZE = 50_000  # images in the official training batches
TEST_SIZE = 10_000

# The official archive: python pickles of the batches, in one gzipped tar.
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_SIZE = 170_498_071  # bytes
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
