"""Caption shards: the one reader, writer and caption mixer shared by the recaption stage and both trainers.

Data flow: builders -> ``writer.ShardWriter`` (webdataset tars) -> ``reader`` (decode, validate, count)
-> ``mixer`` (p = probability of the ORIGINAL caption) -> ``loader.CaptionLoader`` (batches).
"""
