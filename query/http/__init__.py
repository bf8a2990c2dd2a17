"""The node's HTTP service: the aiohttp app and its routes, API keys and roles,
streamed bodies, metrics, OpenAPI, the admin UI's static files, serving."""
