"""``eo-node-agent``: applies the setpoints that opted-in power-cap sidecars request, owns their restore."""
