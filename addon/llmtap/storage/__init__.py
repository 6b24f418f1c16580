"""The files llmtap owns: the writer process and its DuckDB writer, numbered migrations, the SQLite
response cache, read access for the CLI, and the generated schema doc.

The writer is the only process that writes the DuckDB file; readers open it read-only.
"""
