"""From a finished call to a row: the record that crosses to the writer, usage, token estimates,
prices (genai-prices) and the cache entry a hit copies.

Runs in the writer process (and in the API for async logs); no database access here.
"""
