"""What fastgrad's commands (`python -m fastgrad`, `fastgrad.gpt`, `fastgrad.demo`) share:
how they end, and the training runs' progress display."""
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


def progress(steps: int) -> tuple[Callable[..., None], Callable[[], None]]:
    """(show, close) for a run of `steps` training steps: show(k, name=text, ...) after
    step k (from 0). With tqdm installed, its bar on stderr with the texts beside it,
    shown at the bar's next redraw (every 0.1 s): a redraw per step would cost ~10% of a
    fast run's time, and write a line per step where stderr is a log. Without tqdm, a
    line on stdout at every tenth of the run and at the last step."""
    try:
        from tqdm import tqdm
    except ImportError:
        def line(k: int, **shown: str) -> None:
            if k % max(1, steps // 10) == 0 or k == steps - 1:
                texts = "".join(f"  {name} {text}" for name, text in shown.items())
                print(f"step {k + 1}/{steps}{texts}", flush=True)
        return line, lambda: None
    bar = tqdm(total=steps, desc="training", unit="step")

    def update(k: int, **shown: str) -> None:
        bar.set_postfix(shown, refresh=False)
        bar.update(1)
    return update, bar.close
