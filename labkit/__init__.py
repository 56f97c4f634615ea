"""labkit: measure Kubernetes service datapaths on a real Linux kernel."""

__version__ = "0.1.0"
