"""twotier: the seed's two-tier Flask system on Kubernetes, as Invoke tasks.

`invoke --list` shows every task; `invoke --help TASK` shows its options.
Settings live under `twotier:` in invoke.yaml (override with INVOKE_TWOTIER_<KEY>).
The machinery lives in the `twotier/` package; this file is the table of contents.
"""
from invoke import Collection, task

from twotier.taskutil import friendly, settings

# ---------------------------------------------------------------------------------------------
# Run the two services on this machine (the seed's "pre-containerization sanity check")
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Images and manifests
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Deploy, inspect, debug, clean
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# The local cluster (cluster.*)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Dev loop, tests and benchmarks
# ---------------------------------------------------------------------------------------------

ns = Collection()
