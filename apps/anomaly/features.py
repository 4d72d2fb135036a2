"""What a model sees of a reading: one number per feature, read from TelemetryReading's columns.

Training reads these columns from the database; scoring reads the same names from the rows the
telemetry consumer stores, so the two can never disagree on order or meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# Battery (%), signal strength (dBm), temperature (°C): what every device kind reports.
FEATURES: Final = ("battery", "signal", "temperature")

Matrix = npt.NDArray[np.float64]


def matrix(rows: Sequence[Sequence[float | None]]) -> Matrix:
    """Rows of feature values as a float matrix; a missing value is NaN."""
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def row_values(row: Mapping[str, Any], features: Sequence[str] = FEATURES) -> list[Any]:
    return [row.get(name) for name in features]


def complete(values: Matrix) -> npt.NDArray[np.bool_]:
    """The rows with every feature present and finite."""
    return np.asarray(np.isfinite(values).all(axis=1), dtype=np.bool_)
