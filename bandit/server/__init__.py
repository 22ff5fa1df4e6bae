"""`bandit serve`: the facade as a JSON API under /v1, a merge job queue on the server's
device, the reward join window and a dashboard — one process, the only writer of its
database. FastAPI and uvicorn are imported only here, never by the CLI's other commands.
"""
