"""leveret's benchmarks: ``python -m bench`` runs them all (see ``bench/README.md``).

Shared by every benchmark: ``_measure`` (clocks, CPU accounting through /proc),
``_clients`` (each library behind one small interface), ``_roles`` (the worker,
producer, callee and caller processes), ``_processes`` (starting, syncing and
always cleaning up those processes), ``_results`` (machine info, numbers, result
files), ``_profiling`` and ``_report`` (tables, the chart and the summary).
"""
