"""One-line messages: summaries of long errors, and training's progress lines for the batch."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def gist(text: str, empty: str = "no reason given") -> str:
    """The first sentence of an error or skip reason (`empty` when there is none).

    Whole sentences, not a fixed number of characters: a cut mid-sentence reads as a wrong
    instruction. The full text stays where it was recorded (skipped.json, the notebook).
    """
    return text.strip().splitlines()[0].split(". ")[0] if text.strip() else empty


PROGRESS_FILE_ENV = "RAPID_PROGRESS_FILE"
"""Environment variable naming the file where training loops append one line per epoch; the
batch sets it for each notebook's kernel and shows the lines as they come (`follow_progress`)."""


def report_progress(line: str) -> None:
    """Append one progress line (an epoch's summary) for the batch, when it is listening.

    A plain file, not the kernel's output: papermill would show every tqdm update, and the
    batch wants one line an epoch. Without the variable (JupyterLab, the CLI) nothing happens.
    """
    path = os.environ.get(PROGRESS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(" ".join(line.split()) + "\n")


@contextlib.contextmanager
def follow_progress(show: Callable[[str], None], interval_s: float = 1.0) -> Iterator[None]:
    """While the block runs, hand each line that training appends (`report_progress`, from a
    child process such as a notebook kernel, which inherits the variable) to `show`."""
    with tempfile.TemporaryDirectory(prefix="rapid-progress-") as folder:
        path = Path(folder) / "progress.log"
        path.touch()
        stop = threading.Event()

        def follow() -> None:
            with open(path, encoding="utf-8") as file:
                while True:
                    finished = stop.is_set()  # read once more after the block ends
                    for line in file.readlines():
                        show(line.rstrip("\n"))
                    if finished:
                        return
                    stop.wait(interval_s)

        before = os.environ.get(PROGRESS_FILE_ENV)
        os.environ[PROGRESS_FILE_ENV] = str(path)
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        try:
            yield
        finally:
            stop.set()
            reader.join()
            if before is None:
                os.environ.pop(PROGRESS_FILE_ENV, None)
            else:
                os.environ[PROGRESS_FILE_ENV] = before
