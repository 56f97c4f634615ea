"""The lab: client, node and backend network namespaces joined by veths, and the echo
server behind the services.
"""
