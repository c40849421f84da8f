"""Edit records and the readers for their file shapes."""

from editscale.data.readers import load_cases, read_records
from editscale.data.records import EditCase, EditRequest

__all__ = ["EditCase", "EditRequest", "load_cases", "read_records"]
