"""The pipeline stages as named workflows, and the Click CLI that runs them."""
