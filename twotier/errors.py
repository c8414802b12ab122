"""One exception type for every failure a user can act on, the same class the local cluster raises.

Tasks raise ``UserError(what, hint, code=1)``; ``tasks.py`` turns it into two lines on stderr
(``error: ...`` / ``hint: ...``) and a non-zero exit, never a traceback.
"""
from localcluster.errors import ClusterError as UserError

__all__ = ["UserError"]
