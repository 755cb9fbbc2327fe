"""The cplat control plane: the aiohttp service behind ``cplat serve``."""
