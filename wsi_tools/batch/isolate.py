"""Run one slide's extraction in a child process of the Dask worker.

Why a child: a Python thread cannot be stopped, so a Dask task that runs past
``--timeout`` would go on writing (and could still commit) after the batch
gave up on it. A child process can be killed: its slide then stays an
uncommitted temporary group, which the store's crash-safe writing never shows
as complete and the next run cleans up. A segfault in a slide decoder kills
only the child, and the worker goes on with the next slide.

Children fork from a per-worker *forkserver* that has the extraction code
imported already, so starting one costs milliseconds. They die with their
worker: each holds the read end of a keep-alive pipe whose only writer is the
worker, and EOF on it (the worker is gone, even by ``kill -9``) makes the child
kill itself, so no orphan goes on writing into the store. (The parent-death
signal would not do: a child's parent is the forkserver, which stays alive as
long as any of its children does.)
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsi_tools.errors import WsiToolsError

PRELOAD = ["wsi_tools.batch.isolate", "wsi_tools.extract"]

# OSError numbers that come and go on network file systems and busy disks.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EINTR,
    }
)


@dataclass(frozen=True)
class ChildOutcome:
    """What became of a child: ``ok`` with its value, or an error description."""

    ok: bool
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    transient: bool = False
    traceback: str | None = None
    seconds: float = 0.0
    cpu_seconds: float | None = None  # the child's user + system time, all its threads


def is_transient(error: BaseException) -> bool:
    """Errors worth a retry: I/O hiccups, never bad input (WsiToolsError)."""
    if isinstance(error, WsiToolsError):
        return False
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def _die_with_worker(keepalive: multiprocessing.connection.Connection) -> None:
    """Kill this child as soon as the worker's end of ``keepalive`` closes."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            keepalive.recv()  # nothing is ever sent: returns only by EOF
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-worker", daemon=True).start()


def _child_main(
    connection: multiprocessing.connection.Connection,
    keepalive: multiprocessing.connection.Connection,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
) -> None:
    _die_with_worker(keepalive)
    try:
        message: tuple = ("ok", fn(*args, **kwargs))
    except BaseException as error:  # everything goes back to the parent as a record
        message = (
            "error",
            type(error).__name__,
            str(error) or repr(error),
            is_transient(error),
            traceback.format_exc(limit=8),
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    message = (*message, usage.ru_utime + usage.ru_stime)
    try:
        try:
            connection.send(message)
        except (BrokenPipeError, ConnectionResetError):
            return  # the worker is gone; nobody is listening
        except Exception as error:  # e.g. an unpicklable result
            connection.send(
                ("error", type(error).__name__, f"cannot send the result back: {error}", False, None)
            )
    finally:
        connection.close()


def _context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _allow_children() -> None:
    """Dask starts workers as daemonic processes, which multiprocessing forbids to
    have children. That rule exists so children cannot outlive their parent;
    ours die with it (keep-alive pipe) and are always joined or killed here."""
    process = multiprocessing.current_process()
    if process.daemon:
        process._config["daemon"] = False  # type: ignore[attr-defined]


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def run_isolated(
    fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, timeout: float | None = None
) -> ChildOutcome:
    """Call ``fn(*args, **kwargs)`` in a child process; kill it after ``timeout`` seconds."""
    _allow_children()
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    keepalive_child, keepalive_worker = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(sender, keepalive_child, fn, args, kwargs or {}), daemon=False
    )
    started = time.perf_counter()
    process.start()
    sender.close()  # the child holds the only writer now: EOF means it is gone
    keepalive_child.close()  # and the only reader of the keep-alive pipe
    message = None
    try:
        deadline = None if timeout is None else started + timeout
        while message is None:
            wait_for = None if deadline is None else max(0.0, deadline - time.perf_counter())
            ready = multiprocessing.connection.wait([receiver, process.sentinel], timeout=wait_for)
            if not ready:
                process.kill()
                process.join()
                return ChildOutcome(
                    ok=False,
                    error_type="Timeout",
                    error=f"stopped after the --timeout of {timeout:g} s; the slide was not written",
                    seconds=time.perf_counter() - started,
                )
            if receiver in ready:
                try:
                    message = receiver.recv()
                except EOFError:
                    break  # the child died before it could answer
            else:
                # The sentinel fired; a message may still be in the pipe.
                if receiver.poll():
                    continue
                break
        process.join()
    finally:
        if process.is_alive():  # interrupted (KeyboardInterrupt): never leave a writer behind
            process.kill()
            process.join()
        receiver.close()
        keepalive_worker.close()
    seconds = time.perf_counter() - started
    if message is None:
        code = process.exitcode if process.exitcode is not None else 0
        how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code}"
        return ChildOutcome(
            ok=False,
            error_type="ProcessDied",
            error=f"the extraction process {how} (a crash in a slide decoder, or out of memory)",
            seconds=seconds,
        )
    if message[0] == "ok":
        return ChildOutcome(ok=True, value=message[1], seconds=seconds, cpu_seconds=message[2])
    _, error_type, error, transient, trace, cpu_seconds = message
    return ChildOutcome(
        ok=False,
        error_type=error_type,
        error=error,
        transient=transient,
        traceback=trace,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )
