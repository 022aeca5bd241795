"""The one error type for bad input data of a single file (JSON, RLE, image): it fails that file, never the batch.

Kept apart so that every runner can recognise it by type without importing OpenCV, PIL or pycocotools.
"""


class InputError(ValueError):
    """A source file cannot be used; the message says what is wrong (and where, e.g. which annotation)."""
