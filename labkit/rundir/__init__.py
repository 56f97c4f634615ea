"""Run directories: the schema of their tables and meta files, atomic writes, provenance
(tools, versions, machine).
"""
