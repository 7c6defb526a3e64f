"""Analyses over graphs; views built on demand, never stored in the IR."""

from cimc.analysis.graph_view import critical_path, to_networkx

__all__ = ["critical_path", "to_networkx"]
