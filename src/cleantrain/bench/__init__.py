"""The benchmark grid: attacks × rates × defenses × seeds, resumable, one process per run."""

from .grid import Cell, Grid, load_grid, parse_grid
from .runner import run_grid
from .table import collect, write_tables

__all__ = ["Cell", "Grid", "load_grid", "parse_grid", "run_grid", "collect", "write_tables"]
