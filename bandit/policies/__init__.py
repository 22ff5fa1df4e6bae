"""Policies: the interface (base), the one ridge, LinUCB, LinTS, hybrid, VW, baselines.

Empty on purpose: importing `bandit.policies.ridge` (the fast reward path) must not pull numpy.
"""
