"""Pagination of every list: `?limit=&offset=`, 100 rows by default, never more than 1000."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class CappedLimitOffsetPagination(LimitOffsetPagination):
    # A larger ?limit= is served as this many rows: one request cannot dump a tenant's history.
    max_limit = 1000
