"""Run commands: parameters, the runner (blocks, resume, progress), and the sweep, control-
plane, CPU, bench and doctor experiments.
"""
