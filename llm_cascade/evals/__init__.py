"""The eval harness: recorded runs, a vectorised cascade simulator, calibration, baselines and reports.

Heavy pieces (matplotlib, datasets, SQLite caching) live in their own modules and are imported only when used.
"""

from .calibrate import Calibration, Target, calibrate
from .records import ModelRun, Record, RecordError, RunMatrix, load_records, save_records, split_records
from .simulate import CascadeConfig, CascadeSpec, SimResult, Simulator, TierSpec

__all__ = [
    "Calibration",
    "CascadeConfig",
    "CascadeSpec",
    "ModelRun",
    "Record",
    "RecordError",
    "RunMatrix",
    "SimResult",
    "Simulator",
    "Target",
    "TierSpec",
    "calibrate",
    "load_records",
    "save_records",
    "split_records",
]
