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


@task(name="up")
@friendly
def cluster_up(c):
    """Build (once, cached) and start the local single-node Kubernetes cluster; idempotent."""
    from twotier import localcluster

    localcluster.up()


@task(name="down", help={"purge": "also delete the local registry's images"})
@friendly
def cluster_down(c, purge=False):
    """Stop the local cluster and remove every process, interface, rule and mount it created."""
    from twotier import localcluster

    localcluster.down(purge=purge)


@task(name="status")
@friendly
def cluster_status(c):
    """Show the local cluster's processes and node readiness as a table."""
    from twotier import localcluster
    from twotier.tables import table

    print(table(["COMPONENT", "PID", "STATE"], localcluster.status_rows()))


@task(name="kubeconfig")
@friendly
def cluster_kubeconfig(c):
    """Print the path of the local cluster's kubeconfig (export KUBECONFIG=$(invoke cluster.kubeconfig))."""
    from twotier import localcluster

    print(localcluster.kubeconfig_path())


@task(name="build", help={"component": "one of kubernetes, etcd, containerd, cri-tools, coredns, tilt (default: all cluster parts)"})
@friendly
def cluster_build(c, component=""):
    """Build the cluster's binaries from upstream sources through the Go module proxy (cached by version)."""
    from twotier import localcluster

    localcluster.ensure_binaries([component] if component else localcluster.CLUSTER_BUILDS)


cluster = Collection("cluster", cluster_up, cluster_down, cluster_status, cluster_kubeconfig, cluster_build)

# ---------------------------------------------------------------------------------------------
# Dev loop, tests and benchmarks
# ---------------------------------------------------------------------------------------------

ns = Collection()
ns.add_collection(cluster)
