"""Test support: helpers only the tests (and the benchmarks in bench/) use, kept out of the product.

`dap` is a Debug Adapter Protocol client; `tilt` runs `tilt up` in the background and makes the
live edit the Tilt tests and benchmarks time.
"""
