"""Hearth's own routes: HEAD /, /health, /metrics, /tokenize and /detokenize, /api/ps and
/admin/models, and the web page."""
