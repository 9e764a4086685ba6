"""The JSON API of `tusou serve` (/api/v1, /healthz, /metrics) and what guards the whole server:
keys, limits, errors as one line of JSON. docs/api.md is its manual."""
