"""The HTTP plumbing every API crosses: API keys, body limits, Host and Origin checks, the JSON
body rules, the drain, the journal, metrics, error bodies, SSE framing, the OpenAPI document and
the lease that holds a request's model until its response is sent."""
