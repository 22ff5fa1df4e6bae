"""Offline evaluation: outcome tables, replay, off-policy estimates, decision logs."""
