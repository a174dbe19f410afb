"""One module per stage, each defining ``STAGE`` (a ``pipeline.registry.Stage``); registered in ``pipeline.registry``."""
