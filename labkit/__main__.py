"""``python -m labkit``.  A Ctrl-C at any moment, also while Python is still
importing labkit's modules (seconds on a slow machine, before the CLI's own
handler exists), ends with one line on stderr and exit status 130."""
import signal
import sys

try:
    from labkit.cli import main

    code = main()
    # done: a Ctrl-C while the interpreter shuts down prints nothing ("Exception ignored ...")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C: no traceback either
    sys.stderr.write("labkit: interrupted\n")
    code = 130
raise SystemExit(code)
