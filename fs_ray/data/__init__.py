"""Data: raw corpora prepared into shards (``corpus``, ``manifest``), streamed to workers
(``ingest``), tokenizers (``tokenization``) and labelled tasks (``tasks``, ``encoding``)."""
