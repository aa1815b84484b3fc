"""The scheduler served over gRPC on port 0 (real servers, no mocks of our services)."""
