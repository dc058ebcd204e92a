"""Privacy-preserving analytics proxy for Google Analytics 4."""

__version__ = "0.1.0"
