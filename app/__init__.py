"""The Xoe-NovAi application package; only its core module lives in this repository."""
