"""Dagster front door of npzfix: assets, partitions, resources, sensors, checks."""
