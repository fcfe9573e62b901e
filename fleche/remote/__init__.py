"""The server of the SSH remote cache: ``fleche remote --serve PATH``.

Above the caches; the client is a store (:class:`fleche.store.RemoteStore`)
and the framing both speak is :mod:`fleche.store`'s wire.
"""

from fleche.remote._server import serve

__all__ = ["serve"]
