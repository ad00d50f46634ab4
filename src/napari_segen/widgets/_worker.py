"""Run a core generator off the GUI thread with a napari progress bar and a cancel button.

The core's long tasks (``iter_predict``, ``train_segmentation``...) are generators
that yield progress events and return a result. :class:`TaskRunner` runs one in
a ``thread_worker``; every yielded event reaches the GUI thread through the
worker's ``yielded`` signal, where the progress bar is updated; "Cancel" calls
``worker.quit()``, which stops the generator at its next ``yield``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import PushButton
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info


class TaskRunner:
    """One long task at a time for a widget, with progress and cancel.

    Args:
        run_button: disabled while a task runs.
        cancel_button: enabled while a task runs; cancels it.
        progress_of: maps a yielded event to ``(done, total)`` or None.
    """

    def __init__(
        self,
        run_button: PushButton | list[PushButton],
        cancel_button: PushButton,
        progress_of: Callable[[Any], tuple[int, int] | None],
    ) -> None:
        self.run_buttons = run_button if isinstance(run_button, list) else [run_button]
        self.cancel_button = cancel_button
        self.progress_of = progress_of
        self.worker: GeneratorWorker | None = None
        self.cancelled = False
        self._busy = False  # set at start(), before the thread runs: no double starts
        self._pbar: progress | None = None
        cancel_button.enabled = False
        cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self._busy

    def start(
        self,
        gen_fn: Callable[..., Generator[Any, None, Any]],
        *args: Any,
        description: str,
        on_event: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> GeneratorWorker:
        """Start ``gen_fn(*args, **kwargs)`` in a worker thread and return the worker."""
        if self.running:
            raise RuntimeError("a task is already running; wait for it or cancel it")
        self.cancelled = False
        self._pbar = progress(total=0, desc=description)
        worker = thread_worker(gen_fn, start_thread=False)(*args, **kwargs)

        def _yielded(event: Any) -> None:
            pos = self.progress_of(event)
            if pos is not None and self._pbar is not None:
                done, total = pos
                if self._pbar.total != total:
                    self._pbar.total = total
                self._pbar.n = done
                self._pbar.refresh()
            if on_event is not None:
                on_event(event)

        def _returned(result: Any) -> None:
            if on_done is not None and not self.cancelled:
                on_done(result)

        def _errored(err: Exception) -> None:
            show_error(f"{description} failed: {err}")

        def _finished() -> None:
            self._busy = False
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None
            for b in self.run_buttons:
                b.enabled = True
            self.cancel_button.enabled = False
            if self.cancelled:
                show_info(f"{description} cancelled")
            if on_finish is not None:
                on_finish()

        worker.yielded.connect(_yielded)
        worker.returned.connect(_returned)
        worker.errored.connect(_errored)
        worker.finished.connect(_finished)
        for b in self.run_buttons:
            b.enabled = False
        self.cancel_button.enabled = True
        self.worker = worker
        self._busy = True
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Ask the running task to stop at its next step."""
        if self.running and self.worker is not None:
            self.cancelled = True
            self.worker.quit()
