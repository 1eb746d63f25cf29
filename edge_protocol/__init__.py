"""edge_protocol."""
