"""KV tiers: device blocks evicted from the prefix cache move to host RAM, long prefixes are written
to disk, and a prefix-cache miss on the device looks down the tiers and loads instead of computing.

- `fingerprint.py`: which model, weights, dtypes and block size KV was computed with (another
  model never reads it) and the strong per-block digests that identify a prefix in the tiers.
- `host_pool.py`: fixed host-RAM slots, LRU by block key.
- `disk_store.py`: one checksummed file per block under the user cache dir, written atomically,
  capped with LRU eviction, shared safely by several processes.
- `disk_writer.py`: the background thread that writes, so a step never waits for the disk.
- `disk_reader.py`: the background thread that reads a prefix's blocks into reserved RAM slots,
  so a step never waits for the disk either (the sequence over that prefix waits instead).
- `copies.py`: the tensor copies between the device cache and host rows (a side stream on CUDA).
- `tiers.py`: `KVTiers`, what the block manager calls: lookup, load, evicted, published, flush,
  collect_reads, release.
"""
