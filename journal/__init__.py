"""sop: keep a backtest workspace honest — one strategy, one row, every change journaled.

The Python API (the same operations as the ``sop-*`` commands)::

    import journal

    with journal.transaction("MA_Cross_10_50", root="/data/ws") as tx:
        write_artifacts(tx.strategy_dir, tx.run_dir, tx.run_id)

    tx = journal.begin("MA_Cross_10_50")          # the gatekeeper
    journal.commit(tx.txid)                       # the gate, then the row
    journal.abort(tx.txid)                        # quarantine
    journal.recover()                             # after a crash

Every function raises a :class:`journal.errors.SopError` subclass whose
``exit_code`` is the matching command's exit status (SPEC §6).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "init": "porcelain", "begin": "porcelain", "commit": "porcelain", "abort": "porcelain", "run": "porcelain",
    "status": "porcelain", "transaction": "porcelain", "recover": "recovery",
    "sweep": "janitor", "restore": "repair", "release": "repair", "log": "audit", "fsck": "audit",
}


def __getattr__(name: str) -> Any:
    """Load the API lazily, so that ``sop-begin`` starts fast."""
    if name in _API:
        import importlib
        return getattr(importlib.import_module(f"journal.{_API[name]}"), name)
    if name == "errors":
        import importlib
        return importlib.import_module("journal.errors")
    raise AttributeError(name)


__all__ = [*_API, "errors", "__version__"]
