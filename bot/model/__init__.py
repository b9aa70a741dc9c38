"""The model side: the resident pipeline and its worker thread, and the Hugging Face cache.

Nothing here imports the job or Discord sides.
"""

from __future__ import annotations

import os

# torch sets TORCHINDUCTOR_CACHE_DIR to its default, a temporary folder, the moment torch._dynamo is
# imported (diffusers imports it); the operator's own value is read here, before any model module
# imports torch, so that otherwise the compile cache goes to DATA_DIR (pipeline_service).
OPERATOR_INDUCTOR_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
