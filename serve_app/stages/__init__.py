"""The four Ray Serve deployments of the graph, one file each (wired together in serve_app/app.py)."""
