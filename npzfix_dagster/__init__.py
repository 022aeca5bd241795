"""Dagster front door of npzfix: assets, partitions, resources, sensors, checks.

Imports ``npzfix_core``; the core never imports this package.
"""

from npzfix_dagster import antlr_compat

antlr_compat.install()
