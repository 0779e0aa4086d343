"""The fake API servers of these tests run on the project's one loopback server helper."""

from pipelines.loopback import ServerThread

__all__ = ["ServerThread"]
