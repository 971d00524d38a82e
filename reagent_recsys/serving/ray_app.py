"""The same app as a Ray Serve deployment (optional: needs ``pip install "ray[serve]"``).

    from reagent_recsys.serving.ray_app import policy_application
    ray.serve.run(policy_application("run.yaml"), route_prefix="/")

One replica: the decision log has a single writer (its journal, pending decisions and segments live in the
replica). The app, its endpoints, the log and hot reload are exactly workflow.serve's; Ray Serve's proxy
replaces uvicorn in front of it. ray is imported only here.
"""

from __future__ import annotations

from typing import Any


def policy_application(config_path: str, overrides: tuple[str, ...] = (), **deployment_options: Any) -> Any:
    """A bound Ray Serve application serving `config_path`'s export (the app is built on the replica)."""
    from ray import serve

    def build() -> Any:
        from reagent_recsys.config import load_config
        from reagent_recsys.serving.app import build_server, create_app

        return create_app(build_server(load_config(config_path, overrides)))

    options = {"name": "reagent_policy", "num_replicas": 1, "max_ongoing_requests": 1024, **deployment_options}
    if options["num_replicas"] != 1:
        raise ValueError("num_replicas: the decision log has a single writer; run one replica per log directory")
    return serve.deployment(**options)(serve.ingress(build)()).bind()
