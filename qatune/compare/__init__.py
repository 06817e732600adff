"""``qatune compare``: every method on one budget (same data, epochs, seed, evaluation), one honest report.

- :mod:`qatune.compare.runner`: the comparison spec (YAML/flags) and the loop that runs each method as its
  own ``qatune train`` subprocess in ``OUTPUT/<method>/``, skipping finished ones;
- :mod:`qatune.compare.measure`: inference latency/throughput, size on disk, peak memory;
- :mod:`qatune.compare.report`: report.csv/.md/.json/.html and the plots, rebuilt from the run directories.
"""

from __future__ import annotations

from qatune.compare.report import write_report
from qatune.compare.runner import CompareSpec, MethodSpec, load_compare_spec, run_compare

__all__ = ["CompareSpec", "MethodSpec", "load_compare_spec", "run_compare", "write_report"]
