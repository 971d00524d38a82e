"""Serving the exported policy over HTTP: request parsing, exploration, the decision log and the app.

``reagent_recsys.serving.app.create_app`` builds the ASGI app; ``workflow.serve`` runs it with uvicorn.
"""
