"""This machine's kernel, thinly: network namespaces and netlink, nf_tables
batches (``nfnetlink``), the ``bpf()`` system call, bpffs and the eBPF toolchain
(``bpf``), the lab's state files and `labkit clean`, CPU isolation and memory
limits, and Debian packages unpacked into labkit's cache (``debcache``: tools and
the pinned guest kernels).
"""
