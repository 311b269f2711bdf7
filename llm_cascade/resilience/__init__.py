"""Retries, rate limits, circuit breakers and first-token timeouts: what stands between a tier and a flaky provider."""
