"""Development tooling: the local stack, the daemon wrapper, the demo, the simulated farm
and the data-quality gate. Never imported by a code location.
"""
