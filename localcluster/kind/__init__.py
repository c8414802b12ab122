"""kind as a cluster provider (issue 19): see docs/kind.md and localcluster/kind/provider.py."""
