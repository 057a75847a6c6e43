"""OpenAI-compatible HTTP server: embeddings, chat and completions (and RAG) from one GritLM.

Run it with ``gritkit serve`` or build the app yourself::

    from gritkit import GritLM
    from gritkit.serve import create_app
    app = create_app(GritLM.from_pretrained(), api_key="secret")   # then: uvicorn.run(app)
"""

__all__ = ["create_app", "served_model_id"]


def __getattr__(name: str):
    # Imported on first use, so `gritkit --help` does not pay for FastAPI.
    if name in __all__:
        from gritkit.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'gritkit.serve' has no attribute {name!r}")
