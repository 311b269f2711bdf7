"""The configuration file, the OpenAI-compatible proxy and the command line."""
