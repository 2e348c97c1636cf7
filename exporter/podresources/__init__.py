"""Generated Python code for the kubelet PodResources v1 API (``proto/podresources/api.proto``).

Regenerate with ``python -m exporter.podresources.gen``; a test checks the committed files match.
"""
