"""What a model sees of a reading: one number per feature, read from TelemetryReading's columns.

Training reads these columns from the database; scoring reads the same names from the rows the
telemetry consumer stores, so the two can never disagree on order or meaning.

numpy is imported where it is used, not here: every process that handles telemetry imports the
scoring path, and one whose tenants have no model should not pay numpy's 19 MB and 0.3 s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float64]

# Battery (%), signal strength (dBm), temperature (°C): what every device kind reports.
FEATURES: Final = ("battery", "signal", "temperature")


def matrix(rows: Sequence[Sequence[float | None]]) -> Matrix:
    """Rows of feature values as a float matrix; a missing value is NaN."""
    import numpy as np

    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def row_values(row: Mapping[str, Any], features: Sequence[str] = FEATURES) -> list[Any]:
    return [row.get(name) for name in features]


def complete(values: Matrix) -> npt.NDArray[np.bool_]:
    """The rows with every feature present and finite."""
    import numpy as np

    return np.asarray(np.isfinite(values).all(axis=1), dtype=np.bool_)
