"""npzfix core: discovery -> work items -> (features | edges) -> NPZ store -> report.

Plain library, no Dagster. torch and sam2 are imported only by the code that runs
the teacher, so importing this package (and ``npzfix --help``) stays cheap.
"""

__version__ = "0.1.0"
