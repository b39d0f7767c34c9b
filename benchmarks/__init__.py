"""The project's benchmarks, run from the repository root as ``python -m benchmarks.<name>``.

Methods compared for speed are timed by :mod:`benchmarks.measure` in interleaved
rounds, so a change in machine load hits them all alike, and every benchmark
prints its report: the command, the date, the machine and the load average.
"""
