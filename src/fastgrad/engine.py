"""Drop-in for micrograd.engine: `from fastgrad.engine import Value`."""
from fastgrad import Value

__all__ = ["Value"]
