"""Runnable studies; each writes results/<name>/ (see DESIGN.md, section 3)."""
