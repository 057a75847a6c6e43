"""Export gritkit models to other runtimes' formats (``gritkit export gguf``)."""
