"""Dagster front door of npzfix: assets, partitions, resources, sensors, checks.

Imports ``npzfix_core``; the core never imports this package. Importing the
package itself stays light (the ``npzfix`` console script lives here).
"""
