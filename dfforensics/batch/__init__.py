"""Batch triage of whole archives: discovery, debug-info lookup, planning, and
the fork-server workers. The parent process imports no drgn."""
