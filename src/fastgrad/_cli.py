"""How fastgrad's commands (`python -m fastgrad`, `fastgrad.gpt`, `fastgrad.demo`) end."""
from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
    """Exits with main()'s status (None is 0). A reader that closed the pipe before the
    command was done (`python -m fastgrad | head -1`) ends it quietly with status 1, as
    Python's documentation advises: stdout then points at /dev/null, so that the
    interpreter's last flush at exit cannot fail on it again."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(status)
