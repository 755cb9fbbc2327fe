"""Live runtime: node discovery, task processes, the node agent and the live cluster."""
