"""A job's tasks on top of protocol and engine: passes over images in shards and workers, gather, select and write
(ranking), training."""
