"""Golden sets beyond memory: Parquet read in record batches, both models run on each batch (paired), and
each batch reduced into mergeable statistics that the local engine and the Ray engine merge alike.

- :mod:`.source`: a Parquet file, a directory of them, or a glob, read batch by batch;
- :mod:`.stats`: the mergeable statistics (exact sums, a bottom-k uniform sample, whole-set counts);
- :mod:`.batches`: the pure per-batch reduction (read and check, run both models, summarize);
- :mod:`.engines`: the local and Ray engines that run the reduction;
- :mod:`.sizing`: how many rows a scan holds at once, against the memory available.
"""
