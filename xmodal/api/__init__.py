"""The HTTP service (FastAPI) lands here with `xmodal serve`; see docs/architecture.md."""
