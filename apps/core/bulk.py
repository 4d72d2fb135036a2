"""Writing many rows at once without Django's per-object machinery: one statement, built once,
that the driver's `executemany` runs for every row.

Django's `bulk_create` and `bulk_update` cost a general worker more CPU than the writes
themselves (bench/profile_worker.py): a model instance per row (about 40 µs for a reading), a
CASE expression per field over all rows for `bulk_update`, and each datetime made naive in the
database's zone (about 20 µs each on SQLite). Here a row is a mapping of field names to values,
each column is converted by one function chosen once per statement, and an aware datetime is
written to SQLite as Django writes it, in a few microseconds. As with `bulk_create` and
`bulk_update`: no `save()`, no signals, no `auto_now` / `auto_now_add` (set such fields
yourself), and no primary keys returned.

For reading many rows: `one_of(values)` is the right-hand side of an `__in` filter over a whole
batch (one parameter on SQLite, not one per value), and `fetch_instances` builds model instances
from a query's columns without a model's `__init__`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, Field, Model, QuerySet
from django.db.models.base import ModelState
from django.db.models.expressions import RawSQL
from django.db.models.sql.compiler import SQLCompiler

from apps.core.isotime import as_utc, naive_utc_text

Adapt = Callable[[Any], Any]
M = TypeVar("M", bound=Model)

_json = msgspec.json.Encoder()


def insert_rows(model: type[Model], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (field name -> value; every row has the same fields) into `model`'s table.

    A foreign key is given by its column (`device_id`), as `Model(device_id=…)` takes it.
    """
    if not rows:
        return
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    fields = [_column(meta.get_field(name)) for name in rows[0]]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(field.column)) for field in fields)
    marks = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({marks})"  # noqa: S608 - quoted model names
    adapters = [
        (name, column_adapter(field, connection))
        for name, field in zip(rows[0], fields, strict=True)
    ]
    params = [[adapt(row[name]) for name, adapt in adapters] for row in rows]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def update_rows(rows: Sequence[Model], fields: Sequence[str]) -> None:
    """Write `fields` of each of `rows` (instances of one model) as they are on the objects:
    one UPDATE by primary key, executed for each row."""
    if not rows:
        return
    meta = type(rows[0])._meta
    connection = connections[router.db_for_write(type(rows[0]))]
    columns = [_column(meta.get_field(name)) for name in fields]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(str(column.column))} = %s" for column in columns)
    table, key = quote(meta.db_table), quote(str(_column(meta.pk).column))
    sql = f"UPDATE {table} SET {assignments} WHERE {key} = %s"  # noqa: S608 - quoted model names
    adapters = [(column.attname, column_adapter(column, connection)) for column in columns]
    params = [[adapt(getattr(row, name)) for name, adapt in adapters] + [row.pk] for row in rows]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def one_of(model: type[Model], values: Collection[str | int]) -> Any:
    """What `filter(<field>__in=…)` on `model` takes for a batch's values. On SQLite, one JSON
    parameter that `json_each` reads: binding a parameter per value (and, under DEBUG, quoting
    each again for the query log) cost more than the lookup itself for hundreds of values."""
    if connections[router.db_for_read(model)].vendor != "sqlite":
        return list(values)
    return RawSQL("SELECT value FROM json_each(%s)", [_json.encode(list(values)).decode()])


def json_value(model: type[Model], value: Any) -> Any:
    """What a JSONField of `model` is given to store `value`, encoded by msgspec: Django's own
    encoding (`json.dumps`) took a telemetry batch's outbox row about 1 ms. The same JSON, less
    `\\u` escapes; a float NaN or infinity is written as null (jsonb refuses them anyway)."""
    vendor = connections[router.db_for_write(model)].vendor
    if vendor == "sqlite":
        return RawSQL("%s", [_json.encode(value).decode()])
    if vendor == "postgresql":
        return RawSQL("%s::jsonb", [_json.encode(value).decode()])
    return value  # Django's encoding


def fetch_instances(queryset: QuerySet[M], fields: Sequence[str]) -> list[M]:
    """The rows of `queryset` as instances holding `fields` (and the primary key), like
    `.only(*fields)`, without `__init__` per row (its signals and per-field work were most of a
    worker's device query). Other fields load on first access, as deferred fields do; the model
    must not rely on `__init__` or `post_init` for the instances of such a query.

    Each column gets the converters Django's iterator would apply, in one loop; on SQLite an
    aware datetime's is replaced by the same reading in fewer calls (`sqlite_aware`)."""
    model = queryset.model
    attnames = ["pk", *(_column(model._meta.get_field(name)).attname for name in fields)]
    pk_attname = model._meta.pk.attname if model._meta.pk else "id"
    db = queryset.db
    connection = connections[db]
    compiler = queryset.values_list(*attnames).query.get_compiler(using=db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:  # `__in` an empty list: Django runs no query either
        return []
    converting = _row_converters(compiler, connection, attnames)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    names = [pk_attname, *attnames[1:]]
    new = object.__new__
    instances: list[M] = []
    for row in rows:
        if converting:
            row = list(row)
            for position, convert in converting:
                row[position] = convert(row[position])
        instance = new(model)
        instance.__dict__ = dict(zip(names, row, strict=True))
        state = instance._state = ModelState()
        state.adding, state.db = False, db
        instances.append(instance)
    return instances


def _row_converters(
    compiler: SQLCompiler, connection: BaseDatabaseWrapper, names: list[str]
) -> list[tuple[int, Adapt]]:
    """(position, converter) for each selected column (`names`, in the order selected) the ORM
    would convert on reading."""
    selected = [expression for expression, _, _ in compiler.select]
    if len(selected) != len(names):
        raise ValueError(f"selected {len(selected)} columns for {names}")
    fast = _sqlite_aware_reader(connection)
    converters: list[tuple[int, Adapt]] = []
    for position, (convs, expression) in compiler.get_converters(selected).items():
        if fast is not None and convs == [getattr(connection.ops, _SQLITE_DATETIME)]:
            converters.append((position, fast))
            continue

        def convert(value: Any, convs: list[Any] = convs, expression: Any = expression) -> Any:
            for converter in convs:
                value = converter(value, expression, connection)
            return value

        converters.append((position, convert))
    return converters


_SQLITE_DATETIME = "convert_datetimefield_value"  # the SQLite backend's reading of a datetime


def _sqlite_aware_reader(connection: BaseDatabaseWrapper) -> Adapt | None:
    """On SQLite in UTC (see sqlite_datetime), what Django's reading of a DateTimeField gives,
    fast: the driver's naive datetime, in UTC. Else None."""
    slow = getattr(connection.ops, _SQLITE_DATETIME, None)
    if connection.vendor != "sqlite" or connection.timezone_name != "UTC" or not settings.USE_TZ:
        return None
    if slow is None:
        return None

    def sqlite_aware(value: Any) -> Any:
        # The driver has read the column's text already (Django registers its parser for
        # the column type), naive: it was written in UTC.
        if type(value) is datetime:
            return value if value.tzinfo is not None else as_utc(value)
        return slow(value, None, connection)  # None, or text read through an expression

    return sqlite_aware


def column_adapter(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> Adapt:
    """What turns a value of `field` into the parameter the database driver is given: the
    field's own `get_db_prep_save`, except for aware datetimes on SQLite (see sqlite_datetime)."""

    def prepare(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    passes = _PASSES_AS_IS.get(_internal_type(field))
    if passes is not None:
        # Django's preparation of such a value returns it unchanged: skip its six calls.
        return lambda value: value if type(value) is passes else prepare(value)
    if (
        isinstance(field, DateTimeField)
        and connection.vendor == "sqlite"
        and connection.timezone_name == "UTC"
    ):

        def sqlite_datetime(value: Any) -> Any:
            if type(value) is datetime and value.tzinfo is not None:
                return naive_utc_text(value)  # str() of it naive, as Django stores it
            return prepare(value)  # None, naive (Django warns), an expression

        return sqlite_datetime
    return prepare


# Field types whose values of exactly this Python type every backend is given unchanged.
_PASSES_AS_IS: dict[str, type] = {
    "FloatField": float,
    "IntegerField": int,
    "BigIntegerField": int,
    "SmallIntegerField": int,
    "PositiveIntegerField": int,
    "PositiveBigIntegerField": int,
    "PositiveSmallIntegerField": int,
    "AutoField": int,
    "BigAutoField": int,
    "SmallAutoField": int,
    "CharField": str,
    "TextField": str,
}


def _internal_type(field: Field[Any, Any]) -> str:
    target = getattr(field, "target_field", None)  # a foreign key is written as its target
    return str((target or field).get_internal_type())


def quoted_column(model: type[Model], name: str, connection: BaseDatabaseWrapper) -> str:
    """The column of `model`'s field `name`, quoted for `connection`, for a statement built once."""
    return str(connection.ops.quote_name(str(_column(model._meta.get_field(name)).column)))


def _column(field: object) -> Field[Any, Any]:
    if not isinstance(field, Field) or not field.concrete:
        raise ValueError(f"{field} is not a column")
    return field
