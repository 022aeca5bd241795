"""The error types of a single file: bad input data (JSON, RLE, image) and an NPZ that cannot be read or
updated safely; each fails that file, never the batch.

Kept apart so that every runner can recognise it by type without importing OpenCV, PIL or pycocotools.
"""


class InputError(ValueError):
    """A source file cannot be used; the message says what is wrong (and where, e.g. which annotation)."""


class NpzError(Exception):
    """A file that cannot be read or updated safely; the message is the reason."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what ``timeout``, Slurm and Kubernetes send), raised like Ctrl-C's KeyboardInterrupt so
    that a run stops the same way: the files it holds are finished or untouched, its report says so."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interruption(exc: KeyboardInterrupt) -> str:
    """The signal's name: SIGINT for a plain KeyboardInterrupt."""
    import signal

    return signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
