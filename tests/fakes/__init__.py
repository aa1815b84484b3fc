"""Loopback fakes of external provider APIs (Lambda, RunPod, Paperspace, Replicate, Kubernetes, Modal SDK) for tests.

Each HTTP fake serves the provider's real schema from 127.0.0.1 on port 0 and accepts scripted faults.
"""
