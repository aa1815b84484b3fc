"""The detector service: batched Fast-DetectGPT, Binoculars and classifier ensemble scoring how machine-written a text is.

Contract: protos/crucible/detector/v1/detector_service.proto (crucible.detector.v1.DetectorService).
"""
