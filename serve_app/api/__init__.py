"""The HTTP surface: request/response schemas (ours and OpenAI's), chat input parsing, auth,
middleware, and the web UI. The routes themselves live on the ingress stage."""
