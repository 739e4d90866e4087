"""Quarry's executor: platform tasks, the local command line and the adapters around Ultralytics."""
__version__ = "0.2.0"
