"""Test-session settings, shared by the unit tests and the notebooks nbval executes.

Kernels started by nbval inherit this environment: a throw-away run store, no progress
bars, Jupyter's inline matplotlib backend.
"""

import os
import shutil
import tempfile

# Made once, by the process that starts pytest; xdist workers and nbval kernels inherit it.
_THROWAWAY_RUNS = None
if "GROKCORE_RUNS" not in os.environ:
    _THROWAWAY_RUNS = tempfile.mkdtemp(prefix="grokcore-test-runs-")
    os.environ["GROKCORE_RUNS"] = _THROWAWAY_RUNS
os.environ.setdefault("GROKCORE_PROGRESS", "0")
# Jupyter's own inline backend: figures are drawn at the end of each cell, as in a reader's
# kernel and in papermill's. (With Agg a figure is drawn only when saved, so a figure that
# cannot be drawn passed nbval and failed in the book.)
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def pytest_unconfigure(config):
    # Every test session used to leave its run store (~7 MB) in the temporary folder.
    if _THROWAWAY_RUNS is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_THROWAWAY_RUNS, ignore_errors=True)
