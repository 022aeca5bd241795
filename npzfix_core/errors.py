"""The error types of a single file: bad input data (JSON, RLE, image) and an NPZ that cannot be read or
updated safely; each fails that file, never the batch.

Kept apart so that every runner can recognise it by type without importing OpenCV, PIL or pycocotools.
"""


class InputError(ValueError):
    """A source file cannot be used; the message says what is wrong (and where, e.g. which annotation)."""


class NpzError(Exception):
    """A file that cannot be read or updated safely; the message is the reason."""
