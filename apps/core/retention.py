"""Forgetting old rows without holding the database: deletes in small chunks, oldest first.

Each chunk is its own short transaction, so the processing tasks (and, on SQLite, every other
writer) wait at most one chunk for the pruning beat jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from django.db import models, transaction

log = structlog.get_logger(__name__)

CHUNK_ROWS = 2000


def delete_before(
    model: type[models.Model],
    field: str,
    cutoff: datetime,
    *,
    follows_pk: bool = False,
    **filters: Any,
) -> int:
    """Delete the rows of `model` whose `field` is before `cutoff` (and match `filters`).

    `follows_pk`: `field` is set when the row is written and grows with the primary key (a
    receipt or claim time). Then the oldest row answers whether anything is due, by the primary
    key's index: with no index on `field`, finding that nothing is due read the whole table,
    every hour (a PostgreSQL EXPLAIN of the readings' prune), and most runs find nothing.
    """
    manager = model._default_manager
    if follows_pk:
        oldest = manager.filter(**filters).order_by("pk").values_list(field, flat=True)[:1]
        if not oldest or oldest[0] >= cutoff:
            return 0
    old = manager.filter(**{f"{field}__lt": cutoff}, **filters).order_by("pk")
    deleted = 0
    while True:
        with transaction.atomic():
            chunk = list(old.values_list("pk", flat=True)[:CHUNK_ROWS])
            if not chunk:
                break
            model._default_manager.filter(pk__in=chunk).delete()
        deleted += len(chunk)
    if deleted:
        log.info("old rows pruned", table=model._meta.db_table, rows=deleted, before=str(cutoff))
    return deleted
