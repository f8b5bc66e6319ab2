"""xmodal: a cross-modal search engine (images, text, audio) on open_clip, FAISS, Parquet and SQL."""

__version__ = "0.1.0"
