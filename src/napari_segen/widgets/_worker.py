"""Run a core generator off the GUI thread with napari's progress bar, Cancel and error relay.

The core's long tasks (``iter_predict``, ``train_segmentation``...) are generators
that yield progress events and return a result. :class:`TaskRunner` runs one in
a napari worker; what napari already does is left to napari:

* errors: napari's worker relays ``errored`` to its notification manager (one
  notification with the traceback behind it, see :class:`_Worker`). The runner
  only writes a one-line status and restores the buttons. superqt's default
  handler, which re-raises the error on the GUI thread (and aborts a script
  that drives the viewer without ``napari.run()``), is not installed
  (``_ignore_errors=True``).
* progress: every event with ``done``/``total`` (or ``step``/``total_steps``)
  moves a napari ``cancelable_progress`` through ``update()``, which is what
  the activity dock listens to; its Cancel button and the widget's both stop
  the generator at its next ``yield`` (``worker.quit()``).
* layer choices: ``add_dock_widget`` already refreshes them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Label, PushButton
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import notification_manager, show_info

_UNSET = object()


def event_position(event: Any) -> tuple[int, int] | None:
    """``(done, total)`` of a core progress event, or None when it carries none.

    :class:`~napari_segen.utils.generators.Progress` has ``done``/``total``;
    training events have ``step``/``total_steps`` (and may carry ``done``/``total`` too).
    """
    done, total = getattr(event, "done", None), getattr(event, "total", None)
    if done is None or total is None:
        done, total = getattr(event, "step", None), getattr(event, "total_steps", None)
    if done is None or total is None:
        return None
    return int(done), int(total)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class _Worker(GeneratorWorker):
    """napari's generator worker, whose relay of errors to the notifications is made once.

    napari connects that relay in ``_NotifyingMixin.__init__``, which is never
    called when the Qt binding's ``QRunnable.__init__`` does not pass the call
    on (PyQt6: the mixin comes after it in the MRO); errors then reached the
    user only through superqt's re-raise. Here the relay is connected in this
    class, and the mixin's own connection, where it is made, does nothing, so
    each error is notified exactly once with any binding.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A plain function, not a method: the thread pool may delete this runnable before
        # the GUI thread handles the queued signal, and Qt then drops slots bound to it.
        self.errored.connect(_notify_error)

    def _relay_error(self, exc: Exception) -> None:
        pass  # see _notify_error

    def work(self) -> Any:
        try:
            return super().work()
        finally:
            # superqt leaves a cancelled generator suspended at its yield; close it here, in
            # the worker thread, so the task's ``finally`` blocks (process-wide CPU settings,
            # temporary files) run now instead of whenever it is garbage-collected.
            if self.abort_requested:
                self._gen.close()


def _notify_error(exc: Exception) -> None:
    """What napari's worker relay does: one error notification, traceback attached."""
    notification_manager.receive_error(type(exc), exc, exc.__traceback__)


class TaskProgress(cancelable_progress):
    """napari's cancellable progress bar whose Cancel calls ``on_cancel`` at once.

    ``cancelable_progress`` only checks its flag while it is iterated; here the
    work runs elsewhere, so cancelling must reach the worker directly.
    """

    def __init__(self, desc: str, on_cancel: Callable[[], None]) -> None:
        super().__init__(total=0, desc=desc, cancel_callback=on_cancel)

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class ProgressAdapter:
    """Moves a napari progress bar with the events of a core generator (GUI thread).

    Uses ``update()`` and ``set_description()``, which emit the events the
    activity dock listens to (setting ``n`` does not).
    """

    def __init__(self, pbar: TaskProgress, description: str) -> None:
        self.pbar = pbar
        self.description = description
        self.closed = False
        self._message = ""

    def __call__(self, event: Any) -> None:
        if self.closed:
            return
        pos = event_position(event)
        if pos is not None:
            done, total = pos
            if total != self.pbar.total:
                self.pbar.total = total
            if done != self.pbar.n:
                self.pbar.update(done - self.pbar.n)
        # Training's "saved"/"epoch" events carry paths and numbers in ``message``; only
        # plain progress and status events describe the work.
        message = getattr(event, "message", "") or ""
        if getattr(event, "kind", "status") != "status":
            message = ""
        if message and message != self._message:
            self._message = message
            self.pbar.set_description(f"{self.description}: {message}")


class TaskRunner:
    """One long task at a time for a widget: buttons, progress, cancel, a status line.

    Args:
        run_buttons: disabled while a task runs; afterwards each gets back the
            state it had before (the widget's callbacks may then change it).
        cancel_button: enabled while a task runs; cancels it.
        status: the widget's status line; a failure is written there in one line.
    """

    def __init__(
        self,
        run_buttons: PushButton | list[PushButton],
        cancel_button: PushButton,
        status: Label | None = None,
    ) -> None:
        self.run_buttons = run_buttons if isinstance(run_buttons, list) else [run_buttons]
        self.cancel_button = cancel_button
        self.status = status
        self.worker: GeneratorWorker | None = None
        self.cancelled = False
        self.error: BaseException | None = None
        self.pbar: TaskProgress | None = None
        self._busy = False  # set at start(), before the thread runs: no double starts
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
        on_error: Callable[[BaseException], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> GeneratorWorker:
        """Start ``gen_fn(*args, **kwargs)`` in a worker thread and return the worker.

        ``on_event`` gets every yielded event; when the task has ended, the
        buttons are restored and then ``on_done(result)`` (finished, not
        cancelled), ``on_error(err)`` (failed) and ``on_finish()`` are called.
        """
        if self.running:
            raise RuntimeError("a task is already running; wait for it or cancel it")
        self.cancelled = False
        self.error = None
        before = [b.enabled for b in self.run_buttons]
        result: list[Any] = [_UNSET]
        worker = create_worker(
            gen_fn,
            *args,
            _start_thread=False,
            _ignore_errors=True,
            _worker_class=_Worker,
            **kwargs,
        )
        self.pbar = pbar = TaskProgress(description, self.cancel)
        advance = ProgressAdapter(pbar, description)

        def _yielded(event: Any) -> None:
            # napari's bar widget processes Qt events while it redraws, so the task's end
            # may be handled inside advance(): the widget sees the event first.
            if on_event is not None:
                on_event(event)
            advance(event)

        def _returned(value: Any) -> None:
            result[0] = value

        def _errored(err: BaseException) -> None:
            # napari's worker has already relayed the error to its notifications.
            self.error = err
            if self.status is not None:
                self.status.value = f"{description} failed: {one_line(err)}"

        def _finished() -> None:
            self._busy = False
            advance.closed = True
            pbar.close()
            if self.pbar is pbar:
                self.pbar = None
            for b, was in zip(self.run_buttons, before, strict=True):
                b.enabled = was
            self.cancel_button.enabled = False
            if self.cancelled and result[0] is not _UNSET and self.error is None:
                self.cancelled = False  # Cancel came after the task had returned: keep it
            if self.cancelled:
                show_info(f"{description} cancelled")
            elif self.error is not None:
                if on_error is not None:
                    on_error(self.error)
            elif on_done is not None and result[0] is not _UNSET:
                on_done(result[0])
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
