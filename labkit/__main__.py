"""``python -m labkit``.  A Ctrl-C at any moment, also while Python is still
importing labkit's modules (seconds on a slow machine, before the CLI's own
handler exists), ends with one line on stderr and exit status 130.

The process ends with ``os._exit`` once its output is flushed, without the
interpreter's teardown: there an Arrow thread pool can be destroyed while a
worker is still joinable, and a run that finished and wrote everything
aborts with "terminate called without an active exception" (SIGABRT,
apache/arrow#34314, open; seen twice in this suite after complete sweeps).
Nothing of labkit's is left to that teardown: every lab, lock and file is
closed by its context manager before ``main`` returns, and labkit registers
no exit handlers."""
import os
import signal
import sys


def _end(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)


try:
    from labkit.cli import main

    code = main()
    # done: a Ctrl-C from now on prints nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C: no traceback either
    sys.stderr.write("labkit: interrupted\n")
    code = 130
_end(code)
