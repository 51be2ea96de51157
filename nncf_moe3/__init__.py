"""nncf-moe3: 3-bit weight compression for Mixture-of-Experts LLMs on NNCF + OpenVINO."""

from nncf_moe3.api import Mode, compress_weights, get_report

__version__ = "0.1.0"
__all__ = ["Mode", "compress_weights", "get_report", "__version__"]
