"""The RAG application; here it only carries the core module's import path."""
