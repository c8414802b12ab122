"""Machinery behind tasks.py: images, manifests, apply, rollout, exec, local cluster."""
