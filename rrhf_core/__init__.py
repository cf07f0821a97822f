"""rrhf_core: the RRHF algorithm and every pipeline stage as plain library code.

Imports neither prefect nor mlflow (flows/ and tasks/ adapt these functions to orchestration and
tracking); vllm is imported only inside its sampling backend.
"""

__version__ = "0.1.0"
