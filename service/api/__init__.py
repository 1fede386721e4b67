"""HTTP: the classify fast path, guards (key, size, deadlines, in-flight cap), request/response schemas."""
