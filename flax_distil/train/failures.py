"""One failing host ends the whole multi-host job promptly, with its error.

    with fail_together():
        train(...)

Without this, a host that raises (its data skip ratio trips, a file is unreadable) leaves the
others waiting in the step's collective, and its own exit waits in `jax.distributed`'s shutdown
barrier for them: every host hangs until a coordination timeout, minutes later. Instead the
failing host prints its error (a traceback, or one line for a `FlaxDistilError`, with the
CLI's exit status 2), posts it in the coordination service's key-value store and exits at once
(skipping the shutdown barrier). Every host runs a watchdog thread that long-polls that key:
when it appears (or the coordination service itself is gone, when the failing host was process
0), the watchdog prints the error and ends its process, even while the main thread is blocked
in a collective. A single process needs none of this.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback

import jax

from flax_distil.errors import FlaxDistilError

FAILURE_KEY = "flax_distil/failure"
POLL_MS = 500  # how long one watchdog poll waits for the key (and the end of a run for it)


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: the shutdown barrier would wait for hosts stuck elsewhere


def _is_timeout(error: Exception) -> bool:
    return "DEADLINE_EXCEEDED" in str(error) or "timed out" in str(error).lower()


def _watch(client, finished: threading.Event) -> None:
    """Ends this process when another host posts a failure or the coordinator goes away."""
    while not finished.is_set():
        try:
            message = client.blocking_key_value_get(FAILURE_KEY, POLL_MS)
        except Exception as error:  # a poll that timed out, or a lost coordination service
            if _is_timeout(error):
                continue
            message = f"lost the coordination service ({str(error).splitlines()[0]})"
        if finished.is_set():
            return
        print(f"error: stopping this host because another one failed: {message}", file=sys.stderr)
        _exit(1)


def _post_failure(client, error: BaseException) -> None:
    message = f"process {jax.process_index()}: {type(error).__name__}: {error}"
    with contextlib.suppress(Exception):  # another host posted first, or the service is gone
        client.key_value_set(FAILURE_KEY, message)


@contextlib.contextmanager
def fail_together():
    """Runs the body; in a multi-process job an exception on any host ends every host (exit
    status 1, 2 for a `FlaxDistilError`) within about a second, each printing the first failing
    host's error."""
    client = _client() if jax.process_count() > 1 else None
    if client is None:
        yield
        return
    finished = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(client, finished), daemon=True)
    watchdog.start()
    try:
        yield
    except (Exception, KeyboardInterrupt) as error:
        if isinstance(error, FlaxDistilError):  # bad input: one line, as the CLI prints it
            print(f"error: {error}", file=sys.stderr)
        else:
            traceback.print_exc()
        _post_failure(client, error)
        _exit(2 if isinstance(error, FlaxDistilError) else 1)
    finally:
        finished.set()
        # A thread still inside the client's C++ call when the interpreter exits aborts it.
        watchdog.join()
