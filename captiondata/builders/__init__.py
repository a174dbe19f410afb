"""Builders: code that produces caption records (image, original, recaptions, references, meta) for the shard writer."""
