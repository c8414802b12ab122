"""twotier.local.yaml: what ./bootstrap.sh decided for this machine, read by every later `invoke`.

The bootstrap runs in its own process; an environment variable it sets (the local base image,
say) is gone in the user's next shell, and image tags computed there would differ from the ones
it pushed. So its machine-dependent decisions go into a git-ignored file at the repository root,
a plain mapping with the keys of invoke.yaml's ``twotier:`` section, e.g.::

    base_image: local
    registry: localhost:5000

Precedence: invoke.yaml < twotier.local.yaml < INVOKE_TWOTIER_* environment < task flags. A key
set in the environment (even to "") wins over the file, as it wins over invoke.yaml.

    python -m twotier.localsettings record   # what ./bootstrap.sh runs
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_NAME = "twotier.local.yaml"
ENV_PREFIX = "INVOKE_TWOTIER_"

HEADER = """\
# This machine's twotier settings, written by ./bootstrap.sh (git-ignored; edit freely).
# Keys as under `twotier:` in invoke.yaml. Precedence: invoke.yaml < this file <
# INVOKE_TWOTIER_<KEY> environment variables < task flags.
"""

# What the bootstrap decides when nothing says otherwise (no registry is reachable from the
# reference machine, so images build FROM the local Debian base; the local cluster's registry).
BOOTSTRAP_DEFAULTS = {"base_image": "local", "registry": "localhost:5000"}
# Recorded only when given to the bootstrap in the environment (empty means the local cluster).
BOOTSTRAP_OPTIONAL = ("kubeconfig", "context")


def path(root: Path | None = None) -> Path:
    return Path(os.environ.get("TWOTIER_LOCAL_SETTINGS") or (root or ROOT) / FILE_NAME)


def load(file: Path | None = None) -> dict:
    """The file's mapping ({} when absent); a broken file is an error that names it."""
    import yaml  # noqa: PLC0415

    from twotier.errors import UserError  # noqa: PLC0415

    file = file or path()
    if not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{file} is not valid YAML: {err}",
                        "fix it, or delete it and run ./bootstrap.sh again") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} must be a mapping of settings (like `twotier:` in invoke.yaml)",
                        "fix it, or delete it and run ./bootstrap.sh again")
    return data


def env_name(keys) -> str:
    return ENV_PREFIX + "_".join(k.upper() for k in keys)


def overlay(settings, local: dict, environ=None) -> dict:
    """``settings`` (invoke's, environment already applied) with the file's keys on top, except
    where an INVOKE_TWOTIER_* variable set that key."""
    from twotier.project import plain  # noqa: PLC0415

    environ = os.environ if environ is None else environ
    result = plain(settings)

    def merge(node: dict, extra: dict, keys: tuple) -> None:
        for key, value in extra.items():
            here = (*keys, str(key))
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                merge(node[key], value, here)
            elif env_name(here) not in environ:
                node[key] = plain(value)

    merge(result, local, ())
    return result


def record(decisions: dict, file: Path | None = None) -> Path:
    """Write ``decisions`` into the file, keeping any other key already there."""
    import yaml  # noqa: PLC0415

    file = file or path()
    data = {**load(file), **decisions}
    file.write_text(HEADER + yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    return file


def bootstrap_decisions(environ=None, current: dict | None = None) -> dict:
    """What the bootstrap records: a value given in its environment, else the one already in the
    file (a user's earlier choice stays), else the default."""
    environ = os.environ if environ is None else environ
    current = current or {}
    out = {}
    for key, default in BOOTSTRAP_DEFAULTS.items():
        name = env_name((key,))
        out[key] = environ[name] if name in environ else current.get(key, default)
    for key in BOOTSTRAP_OPTIONAL:
        name = env_name((key,))
        if name in environ:
            out[key] = environ[name]
    return out


def main(argv: list[str]) -> int:
    if argv != ["record"]:
        print("usage: python -m twotier.localsettings record", file=sys.stderr)
        return 2
    file = path()
    decisions = bootstrap_decisions(current=load(file))
    record(decisions, file)
    shown = ", ".join(f"{k}: {v!r}" for k, v in decisions.items())
    print(f"recorded this machine's settings in {file.name} ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
