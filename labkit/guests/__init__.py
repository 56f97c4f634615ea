"""Other kernels labkit boots to run a mode the host lacks: labkit's own user-mode Linux
(built from Debian's kernel source) and the virtme-ng VM, with `--kernel` dispatch.
"""
