"""Benchmarks: one module per benchmark, named after it (``renew-faults`` -> ``renew_faults.py``).

Each module has a ``main(argv) -> dict`` and a one-line docstring. The runner prints
the dict as one JSON object on the last line. Figures that depend on the machine
come with a reference figure measured in the same run, so results are ratios.
"""
