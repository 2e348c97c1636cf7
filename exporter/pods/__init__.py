"""Pod and workload attribution: which pod holds which GPU, its energy share, requests and tokens.

Pure decision code (``devices``, ``owners``, ``appmetrics``, ``accounting``) imports no I/O library;
the adapters (``kubelet``, ``kube``, ``scrape``, ``cgroup``) are thin, and ``sampler`` / ``collector``
glue them together off the scrape path.
"""
