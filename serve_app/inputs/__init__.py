"""Untrusted input: image decoding, limits and resizing; PDF pages."""
