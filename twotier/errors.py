"""One exception type for every failure a user can act on.

Tasks raise ``UserError(what, hint)``; ``tasks.py`` turns it into two lines on stderr
(``error: ...`` / ``hint: ...``) and a non-zero exit, never a traceback.
"""


class UserError(Exception):
    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def __str__(self) -> str:
        return self.message + (f"\nhint: {self.hint}" if self.hint else "")
