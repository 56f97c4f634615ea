"""Other kernels labkit boots to run a command there: labkit's own user-mode Linux
(built by ``umlbuild`` from Debian's kernel source) and the virtme-ng VM, both on one
guest contract (``guest``: exchange directory, script, supervision, state), and
``dispatch``, which relaunches a command in the kernel ``--kernel`` names.
"""
