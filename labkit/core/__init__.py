"""Pure building blocks every layer uses: the service catalog, the lab topology,
errors, validation helpers, the table of modes, the kinds of kernel labkit runs in
(and the one reader of ``LABKIT_GUEST``), and files read and written without
trusting a path (the one atomic write).
"""
