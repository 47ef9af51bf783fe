"""Beside the data path, never blocking it: what the proxy tells operators about requests."""
