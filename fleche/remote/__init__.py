"""The SSH remote cache above the store: ``fleche remote --serve`` and ``SshCache``.

Above the caches and the configuration; the client is a store
(:class:`fleche.store.RemoteStore`) and the framing both speak is
:mod:`fleche.store`'s wire. :class:`SshCache` is 0.22's name and signature for
a cache on another machine: a :class:`~fleche.cache.Cache` over that client,
served by the host's own configured cache. Not loaded by ``import fleche``:
``from fleche.remote import SshCache`` (or ``fleche.remote.SshCache``) loads it.

Inside: ``_server`` (the loop that answers, and which store a ``--serve``
with no path serves), ``_ssh_cache`` (:class:`SshCache`).
"""

from fleche.remote._server import serve
from fleche.remote._ssh_cache import SshCache

__all__ = ["SshCache", "serve"]
