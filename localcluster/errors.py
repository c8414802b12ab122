"""The local cluster's one exception type: what failed and what to do next (no traceback)."""


class ClusterError(Exception):
    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return self.message + (f"\nhint: {self.hint}" if self.hint else "")
