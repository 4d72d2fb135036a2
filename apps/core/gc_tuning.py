"""The cyclic garbage collector of a Celery worker, set for a stream of batches.

CPython collects its youngest generation every 700 net container allocations and, now and then,
walks the whole heap: for a pool child that is Django, Celery and every module they loaded,
hundreds of thousands of objects that live as long as the process. A 500-message batch
allocates tens of thousands of containers, so a batch paid several young collections, promoted
its own short-lived rows into the older generations and, every few batches, a walk of the whole
start-up heap (about a tenth of the general worker's CPU, and a pause in any task it struck).

`settle()`, called once a worker has loaded what it keeps, before it forks its pool
(intelliwiz_config/celery.py, for the queues whose QueueSpec.settled_gc says so): moves
every object alive then into the permanent generation (`gc.freeze`), so no collection walks it
again, and collects the young generation every `YOUNG_THRESHOLD` allocations, by which time a
batch's rows are freed by their reference counts. Reference counting frees everything that
forms no cycle, as before; only a cycle among the frozen start-up objects is never collected.
Measured in docs/performance.md (the general pool); the subscriber and Daphne were measured
without a gain and keep CPython's defaults, as do the other pools until measured.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
OLDER_THRESHOLDS = (20, 20)  # young collections per middle one, middle ones per full walk


def settle() -> None:
    """Freeze the startup heap out of the collector's walks and collect less often."""
    gc.collect()  # what startup left as garbage is freed now, not frozen forever
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
