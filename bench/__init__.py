"""The benchmarks behind `invoke bench`: measurements of the product, kept apart from it (twotier/).

`report` runs every section into one report under build/ and regenerates the benchmark tables of
docs/benchmarks.md from it; `api`, `tilt` and `reload` are the sections that need their own code.
"""
