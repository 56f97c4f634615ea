"""Analysis of measured runs (pure: reads run directories, never touches a kernel):
statistics per point, fitted curves against the service count with intervals,
crossovers, the seed's claims, the control-plane, CPU and experiment tables.
"""
