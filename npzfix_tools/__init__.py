"""Tooling around the definitions, kept out of the code location: the ``npzfix`` console script (the core's
commands plus ``partitions``), ``make demo``, and a local PostgreSQL for a team instance and the tests."""
