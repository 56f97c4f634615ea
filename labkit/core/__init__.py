"""Pure building blocks every layer uses: the service catalog, the lab topology, errors,
validation helpers and the table of modes.
"""
