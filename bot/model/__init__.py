"""The model side: the resident pipeline and its worker thread, and the Hugging Face cache.

Nothing here imports the job or Discord sides.
"""
