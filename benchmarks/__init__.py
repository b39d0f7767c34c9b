"""The project's benchmarks, run from the repository root as ``python -m benchmarks.<name>``.

Every timing goes through :mod:`benchmarks.measure`, which times the methods of
one benchmark in interleaved rounds, so a change in machine load hits them all alike.
"""
