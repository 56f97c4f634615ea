"""This machine's kernel, thinly: network namespaces and netlink, nf_tables batches, the
lab's state files and `labkit clean`, limits, and Debian tools kept in labkit's cache.
"""
