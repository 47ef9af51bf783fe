"""Tenants at the door of an exchange: admission, the Redis confirmation, the fair queue.

A part of ``exchange.Exchange`` (its state lives in Exchange's slots), kept apart for its size:
everything here runs only when the config has a ``tenants:`` section (``ctx.tenants``).
``Exchange.start`` calls ``_admit``; the tenants' gate (``tenants/gate.py``) calls back
``dequeued`` or ``queue_refused`` for a request it held.
"""

from ..observe import outcome_of
from . import responses
from .errors import ProxyError


class Admission:
    __slots__ = ()

    def dequeued(self, selection):
        """The fair queue let it go (tenants/gate.py): pick its endpoint now."""
        if self.finished:
            return
        ctx = self.down.ctx
        try:
            self.selection = ctx.router.place(selection)
        except ProxyError as exc:
            self.fail(exc)
            return
        if self.obs is not None:
            ctx.observe.admitted(self)
        try:
            self._connect_or_send()
        except Exception as exc:
            self.down.crashed(exc)

    def queue_refused(self, err):
        """The fair queue gave up on it (full, or it waited too long): a 503 with Retry-After."""
        if not self.finished:
            self.fail(err)

    def _admit(self, ctx):
        """Tenants (proxy/tenants): identify the caller and spend from its limits; False when
        refused (answered here: 401, 404, 429 with Retry-After and x-ratelimit-* fields)."""
        try:
            self.tenant, self.headers = ctx.tenants.admit(
                self.method, self.headers, self.body, int(ctx.router.clock() * 1e6))
        except ProxyError as exc:
            self.finished = True
            self._refused(ctx, exc)
            return False
        if self.obs is not None:
            self.obs.tenant = self.tenant.tenant.name
        if self.tenant.shared:  # limits shared through Redis: one round trip first (tenants/shared.py)
            self.task = ctx.loop.create_task(self._confirm(ctx))
            return False
        return True

    def _refused(self, ctx, exc):
        if self.obs is not None:
            self.obs.tenant = getattr(exc, "tenant", "") or "_unauthenticated"
            ctx.observe.done(self, exc.status, outcome_of(exc))
        headers = getattr(exc, "headers", b"")
        self.down.answer(self, responses.error(exc, self.request_id, self.close_after, headers))

    async def _confirm(self, ctx):
        try:
            refused = await ctx.tenants.confirm(self.tenant)
        except Exception as exc:  # an entry point of its own, like _connect
            self.task = None
            self.down.crashed(exc)
            return
        self.task = None
        if self.finished:  # the client left meanwhile; finish gave the admission back
            return
        if refused is not None:
            self.finish(False)  # the admission was undone already: finish only closes the books
            self._refused(ctx, refused)
            return
        try:
            self._route(ctx)
        except Exception as exc:
            self.down.crashed(exc)
